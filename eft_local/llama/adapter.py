"""The one place that talks to llama.cpp: load, tokenize, evaluate a batch, roll back.

Uses llama-cpp-python's low-level bindings directly (not ``Llama``) so that several
positions' logits come back as one zero-copy NumPy view and the KV cache can be trimmed
to any prefix — what speculative decoding needs — and so three models share one quiet
log callback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import llama_cpp as ll
import numpy as np

from eft_local.errors import Cancelled, UserError
from eft_local.llama import rpc
from eft_local.llama.files import check_gguf
from eft_local.settings import SETTINGS, Fixable

log = logging.getLogger("eft_local.llama")
T = TypeVar("T")
# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.DEBUG
_backend_ready = False


_swallowed = threading.Event()  # a Ctrl+C that landed inside a callback from llama.cpp


def _keeps_interrupt(default: object) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """For a Python function llama.cpp calls back: ctypes prints and drops any exception raised
    in one, so a Ctrl+C landing there (llama.cpp logs hundreds of lines while loading) would be
    lost. It is kept instead, the callback returns ``default`` (a progress callback: False, which
    stops the load), and ``LlamaModel._call`` raises it once llama.cpp returns."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        def guarded(*args):
            try:
                return fn(*args)
            except KeyboardInterrupt:
                _swallowed.set()
                return default

        return guarded

    return wrap


@ll.llama_log_callback
@_keeps_interrupt(None)
def _log_callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    global _last_level
    _last_level = _LEVELS.get(level, _last_level)
    if log.isEnabledFor(_last_level):
        msg = text.decode("utf-8", "replace").rstrip()
        if msg:
            log.log(_last_level, msg)


def init_backend() -> None:
    """Route llama.cpp's logs to ``logging`` (quiet unless configured) and init once."""
    global _backend_ready
    if not _backend_ready:
        ll.llama_log_set(_log_callback, ctypes.c_void_p(0))
        ll.llama_backend_init()
        _backend_ready = True


ProgressFn = Callable[[float], None]
# One KV stream per sequence (llama.cpp's kv_unified off): a sequence attends over its own
# cells only, so its logits match a lone run bit for bit (measured: unified streams round
# differently). Cost: llama.cpp then splits a batch into equal-length parts per sequence,
# which is why the scheduler gives every sequence of a round the same block length.
KV_UNIFIED = False


def default_threads() -> int:
    """Half the logical CPUs (≈ physical cores), as llama-cpp-python does.

    llama.cpp's worker threads spin while they wait; one per hyper-thread, or any more
    threads than the machine has free, makes decoding many times slower, not faster.
    """
    return max(1, (os.cpu_count() or 2) // 2)


class Span(NamedTuple):
    """Tokens appended to one sequence in a decode; its last ``n_logits`` positions get logits."""

    seq: int
    tokens: Sequence[int]
    n_logits: int


def plan_batches(spans: Sequence[Span], cap: int) -> list[list[tuple[int, Span]]]:
    """Cut spans into decodes of at most ``cap`` tokens, in order: whole spans are packed
    together while they fit; a span longer than ``cap`` goes in ``cap``-sized pieces, each
    piece keeping the logits rows that fall inside it. Each entry is (span index, piece)."""
    batches: list[list[tuple[int, Span]]] = [[]]
    size = 0
    for j, span in enumerate(spans):
        n = len(span.tokens)
        first_out = n - span.n_logits
        for a in range(0, n, cap):
            piece = span.tokens[a : a + cap]
            wanted = max(0, a + len(piece) - max(a, first_out))
            if batches[-1] and size + len(piece) > cap:
                batches.append([])
                size = 0
            batches[-1].append((j, Span(span.seq, piece, wanted)))
            size += len(piece)
    return batches


class LlamaModel:
    """One model and its context. Tracks the token ids held in its KV cache."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = SETTINGS["n_ctx"].default,
        n_gpu_layers: int = 0,  # llama.cpp's own default (the CPU); the engine decides what a user gets
        n_threads: int | None = None,
        n_batch: int = 512,
        progress: ProgressFn | None = None,
        rpc_servers: Sequence[str] = (),
        n_seq: int = 1,
    ) -> None:
        init_backend()
        self.path = Path(path)
        check_gguf(self.path)
        self.n_gpu_layers = n_gpu_layers
        if rpc_servers and n_gpu_layers == 0:
            raise Fixable(
                f"{self.path.name}: RPC servers hold only offloaded layers, and no layer is offloaded (n_gpu_layers 0)",
                "set {gpu_layers} to -1 (all) or N > 0",
            )
        self.rpc_servers = rpc.attach(rpc_servers) if rpc_servers else []
        self._model = self._load_model(n_gpu_layers, progress)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = ll.llama_model_n_ctx_train(self._model)
        self.n_seq = max(1, int(n_seq))
        self._ctx = self._new_context(n_ctx * self.n_seq, n_threads, n_batch)
        # llama.cpp rounds n_ctx and clamps n_batch/n_ubatch to it (and may pad them): use
        # what the context really has, so no batch we send can reach its GGML_ASSERTs.
        self.n_ctx = int(ll.llama_n_ctx(self._ctx)) // self.n_seq  # per sequence (each has its own KV stream)
        self.n_batch = max(1, min(n_batch, int(ll.llama_n_batch(self._ctx)), self.n_ctx * self.n_seq))
        self.n_ubatch = int(ll.llama_n_ubatch(self._ctx))
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self.tokens: list[int] = []
        self.seq_tokens: list[list[int]] = [self.tokens] + [[] for _ in range(self.n_seq - 1)]
        self._piece_buf = ctypes.create_string_buffer(256)

    # -- loading ---------------------------------------------------------------------------
    def _load_model(self, n_gpu_layers: int, progress: ProgressFn | None):
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self._devices = rpc.model_devices(self.rpc_servers)  # None: llama.cpp's default (no RPC in use)
        if self._devices is not None:
            params.devices = ctypes.addressof(self._devices)
        self._load_moved = time.monotonic()  # last load progress: an RPC load is bounded by its silences
        self._load_cancel = threading.Event()  # Ctrl+C during an RPC load: llama.cpp stops at the next tensor
        if progress is not None or self.rpc_servers:

            @_keeps_interrupt(False)
            def _cb(fraction: float, _user) -> bool:
                self._load_moved = time.monotonic()
                if progress is not None:
                    progress(float(fraction))
                return not self._load_cancel.is_set()

            self._progress_cb = ll.llama_progress_callback(_cb)  # keep a reference
            params.progress_callback = self._progress_cb
        model = self._call(
            lambda: ll.llama_model_load_from_file(os.fsencode(self.path), params),
            f"loading {self.path.name}",
            last_progress=lambda: self._load_moved,
            on_interrupt=self._load_cancel.set,
        )
        if not model:
            raise Fixable(
                f"llama.cpp could not load {self.path} (unsupported architecture or corrupt file)",
                "run with {verbose} for details",
            )
        return model

    def _new_context(self, n_ctx: int, n_threads: int | None, n_batch: int):
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = self.n_seq
        params.kv_unified = KV_UNIFIED
        threads = n_threads or default_threads()
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        ctx = self._call(lambda: ll.llama_init_from_model(self._model, params), f"allocating the context of {self.path.name}")
        if not ctx:
            raise Fixable(
                f"llama.cpp could not create a context for {self.path} with n_ctx={n_ctx} (out of memory?)",
                "try a smaller {n_ctx} or fewer {gpu_layers}",
            )
        return ctx

    def close(self) -> None:
        self._logits_view = None  # a view over the buffer llama_free releases
        if getattr(self, "rpc_servers", None) and rpc.lost(self.rpc_servers):
            self._ctx = self._model = None  # freeing RPC buffers on a dead server would abort: leak them
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            ctx, self._ctx = self._ctx, None
            self._call(lambda: ll.llama_free(ctx), f"freeing the context of {self.path.name}")
        if getattr(self, "_model", None):
            model, self._model = self._model, None
            self._call(lambda: ll.llama_model_free(model), f"freeing {self.path.name}")

    def _call(self, fn: Callable[[], T], what: str, timeout: float | None = None, **bounds) -> T:
        """A llama.cpp call: bounded in time and interruptible when this model has RPC layers
        (ggml's RPC client waits forever otherwise, see ``rpc.bounded``), else a plain call."""
        if not getattr(self, "rpc_servers", None):
            result = fn()
        else:
            result = rpc.bounded(fn, self.rpc_servers, what, rpc.REPLY_TIMEOUT if timeout is None else timeout, **bounds)
        if _swallowed.is_set():  # a Ctrl+C kept by a callback (``_keeps_interrupt``)
            _swallowed.clear()
            raise KeyboardInterrupt
        return result

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- metadata ---------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    @property
    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    @property
    def tokenizer_model(self) -> str:
        return f"{self.meta('tokenizer.ggml.model')}/{self.meta('tokenizer.ggml.pre') or 'default'}"

    @property
    def size_bytes(self) -> int:
        """Weight bytes: what one decode step streams through memory (our cost proxy)."""
        return int(ll.llama_model_size(self._model))

    @property
    def supports_rollback(self) -> bool:
        """Recurrent and hybrid models can't drop a suffix of their cache."""
        return not (ll.llama_model_is_recurrent(self._model) or ll.llama_model_is_hybrid(self._model))

    @property
    def bos(self) -> int:
        return ll.llama_vocab_bos(self._vocab)

    @property
    def eos(self) -> int:
        return ll.llama_vocab_eos(self._vocab)

    @property
    def add_bos(self) -> bool:
        return bool(ll.llama_vocab_get_add_bos(self._vocab))

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self._vocab, token))

    def token_text(self, token: int) -> bytes:
        """Raw vocabulary text of a token (what the vocabulary check compares)."""
        return ll.llama_vocab_get_text(self._vocab, token) or b""

    def token_attr(self, token: int) -> int:
        return int(ll.llama_vocab_get_attr(self._vocab, token))

    # -- text <-> tokens ----------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """Bytes this token adds to the output text (no leading-space stripping)."""
        n = ll.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n + 1)
            n = ll.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        return self._piece_buf.raw[:n]

    # -- evaluation: one decode path; a single sequence is a batch of one span ----------------
    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def eval(self, tokens: Sequence[int], n_logits: int = 1) -> np.ndarray:
        """Append ``tokens`` to the cache (sequence 0); return logits of the last ``n_logits``
        positions as a (n_logits, n_vocab) float32 array.

        Usually a view into llama.cpp's buffer: the next ``eval`` on this model overwrites it.
        """
        tokens = list(tokens)
        if not tokens:
            raise ValueError("eval needs at least one token")
        return self.eval_many([Span(0, tokens, n_logits)])[0]

    def eval_many(self, items: Sequence[tuple[int, Sequence[int], int]]) -> list[np.ndarray]:
        """Append tokens to several sequences, all or nothing; each item is (seq_id, tokens,
        n_logits) and gets the logits of its last ``n_logits`` positions.

        The items go to llama.cpp in as few decodes as ``n_batch`` allows (see ``plan_batches``).
        Rows are views into llama.cpp's buffer when they come from the last decode (the next
        eval on this model overwrites them), copies otherwise. On any failure every sequence
        is rolled back to where it was.
        """
        spans = [self._checked(Span(seq, list(toks), n)) for seq, toks, n in items]
        if len({s.seq for s in spans}) < len(spans):
            raise ValueError("eval_many: one item per sequence")
        before = {s.seq: len(self.seq_tokens[s.seq]) for s in spans}
        rows: list[list[np.ndarray]] = [[] for _ in spans]
        batches = plan_batches(spans, self.n_batch)
        try:
            for k, batch in enumerate(batches):
                out = self._decode([piece for _, piece in batch])
                last = k == len(batches) - 1
                for (j, _), r in zip(batch, out):
                    if len(r):
                        rows[j].append(r if last else r.copy())
        except BaseException:
            self._undo(before)
            raise
        return [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in rows]

    def _checked(self, span: Span) -> Span:
        """The span with ``n_logits`` clamped to 1..len(tokens); refuses empty spans and a full context."""
        n = len(span.tokens)
        if n == 0:
            raise ValueError(f"nothing to decode for sequence {span.seq}")
        held = len(self.seq_tokens[span.seq])
        if held + n > self.n_ctx:
            raise Fixable(
                f"context full: {held + n} tokens > n_ctx {self.n_ctx} for {self.path.name}",
                "raise {n_ctx} or shorten the prompt",
            )
        return span._replace(n_logits=max(1, min(span.n_logits, n)))

    def _undo(self, before: dict[int, int]) -> None:
        """Put each sequence back to ``before[seq]`` tokens; a model that can't trim its cache
        (recurrent) is cleared instead, so the recorded tokens always match the cache."""
        try:
            for seq, n in before.items():
                self.rollback_seq(seq, n)
        except UserError:
            self.clear()

    def _decode(self, batch: Sequence[Span]) -> list[np.ndarray]:
        """The one ``llama_decode`` call: append each span to its sequence (at most ``n_batch``
        tokens in all). Returns each span's logits rows, views into llama.cpp's buffer.

        A model with RPC layers checks its servers first (a lost one raises RpcServerLost and
        nothing is decoded). A failed decode leaves every sequence as it was.
        """
        size = sum(len(s.tokens) for s in batch)
        if not 0 < size <= self.n_batch:  # never reach llama.cpp's GGML_ASSERT(n_tokens <= n_batch)
            raise RuntimeError(f"batch of {size} tokens for n_batch {self.n_batch}")
        n_out = self._fill_batch(batch)
        if self.rpc_servers:
            rpc.check_alive(self.rpc_servers, self.path.name)
        try:
            what = f"decoding {size} token(s) of {self.path.name}"
            rc = self._call(self._decode_and_wait, what, rpc.decode_timeout(size))
        except BaseException:  # Ctrl+C while an RPC decode finished anyway
            self._drop_uncommitted(batch)
            raise
        if rc != 0:
            self._drop_uncommitted(batch)
            raise RuntimeError(f"llama_decode failed ({rc}) on {self.path.name}")
        logits = self._logits(n_out)
        rows, r = [], 0
        for s in batch:
            self.seq_tokens[s.seq].extend(s.tokens)
            rows.append(logits[r : r + s.n_logits])
            r += s.n_logits
        return rows

    def _decode_and_wait(self) -> int:
        """``llama_decode`` returns before the backends finish (an RPC server may still be
        computing): wait for them here, inside the bounded call, not in ``llama_get_logits``."""
        rc = ll.llama_decode(self._ctx, self._batch)
        if rc == 0:
            ll.llama_synchronize(self._ctx)
        return rc

    def _drop_uncommitted(self, batch: Sequence[Span]) -> None:
        """Remove whatever part of a failed batch llama.cpp did cache."""
        for s in batch:
            ll.llama_memory_seq_rm(self._mem, s.seq, len(self.seq_tokens[s.seq]), -1)

    # The NumPy array over llama.cpp's logits buffer, kept while the buffer stays where it is
    # (``np.ctypeslib.as_array`` builds a ctypes array type per call: ~3 µs per decode).
    # llama.cpp only ever replaces the buffer by a larger one, so a view made for ``n`` rows
    # at this address stays within the buffer for any ``n_rows <= n``.
    _logits_view: np.ndarray | None = None
    _logits_addr: int = 0

    def _logits(self, n_rows: int) -> np.ndarray:
        """The last decode's logits rows: a zero-copy view that the next decode overwrites."""
        if n_rows == 0:
            return np.empty((0, self.n_vocab), np.float32)
        ptr = ll.llama_get_logits(self._ctx)
        addr = ctypes.addressof(ptr.contents)
        view = self._logits_view
        if view is None or addr != self._logits_addr or len(view) < n_rows:
            view = np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_vocab))
            self._logits_view, self._logits_addr = view, addr
        return view[:n_rows]

    def _fill_batch(self, batch: Sequence[Span]) -> int:
        """Write the spans into the llama_batch; returns the number of logits rows asked for."""
        b = self._batch
        i = n_out = 0
        for seq, toks, n_logits in batch:
            pos0 = len(self.seq_tokens[seq])
            first_out = len(toks) - n_logits
            for t, tok in enumerate(toks):
                want = t >= first_out
                b.token[i] = tok
                b.pos[i] = pos0 + t
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = want
                n_out += want
                i += 1
        b.n_tokens = i
        return n_out

    def prefill(self, tokens: Sequence[int], cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Make the cache hold exactly ``tokens``, reusing the common prefix; return the last
        logits row (a view). ``cancel`` is checked between n_batch chunks of a long prompt."""
        tokens = list(tokens)
        common = 0
        for a, b in zip(self.tokens, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # always evaluate >= 1 token to get logits
        if common < self.n_past and not self.supports_rollback:
            common = 0  # recurrent state can't be trimmed: start over
        self.rollback(common)
        rest = tokens[common:]
        for i in range(0, len(rest), self.n_batch):
            if cancel is not None and cancel():
                raise Cancelled
            row = self.eval(rest[i : i + self.n_batch], 1)[0]
        return row

    # -- the KV cache ----------------------------------------------------------------------------
    def rollback(self, n: int) -> None:
        """Keep only the first ``n`` cached tokens (of sequence 0)."""
        self.rollback_seq(0, n)

    def rollback_seq(self, seq: int, n: int) -> None:
        """Keep only the first ``n`` tokens of sequence ``seq`` (others untouched)."""
        toks = self.seq_tokens[seq]
        if n >= len(toks):
            return
        if n == 0 and self.n_seq == 1:
            self._call(lambda: ll.llama_memory_clear(self._mem, True), f"clearing the cache of {self.path.name}")
        elif not ll.llama_memory_seq_rm(self._mem, seq, n, -1):
            raise Fixable(f"{self.path.name} cannot roll back its cache (recurrent/hybrid model)", "set {draft_tokens} to 0")
        del toks[n:]

    def clear(self) -> None:
        """Empty the cache of every sequence (after a failed decode left it unknown)."""
        self._call(lambda: ll.llama_memory_clear(self._mem, True), f"clearing the cache of {self.path.name}")
        for toks in self.seq_tokens:
            toks.clear()

    def seq_pos_max(self, seq: int) -> int:
        """llama.cpp's own view: the largest position cached for ``seq`` (-1 when empty)."""
        return int(ll.llama_memory_seq_pos_max(self._mem, seq))
