"""Shared fixtures and harnesses: synthetic GGUF families built at test time (nothing committed),
the three-role flags, a server thread, and the chat app's wait."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from eft_local.llama.synthetic import ModelSpec, write_family, write_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """A tiny base/chat/reference triple whose three corners all differ."""
    return write_family(tmp_path_factory.mktemp("family"), chat_shift=0.6, base_shift=0.6)


@pytest.fixture(scope="session")
def engine(family):
    from eft_local.engine.decoder import EftEngine

    e = EftEngine.load(family.paths(), n_ctx=512, n_threads=1)
    yield e
    e.close()


@pytest.fixture(scope="session")
def padded_base(tmp_path_factory):
    """The family's base with 64 padding rows (like Qwen2.5 7B's 152064 vs 151936)."""
    d = tmp_path_factory.mktemp("padded")
    spec = ModelSpec(name="base-padded", output_shift=0.6, shift_seed=22, extra_layers=2, pad_vocab_to=576)
    return write_model(d / "base-padded.gguf", spec, seed=0)


@pytest.fixture(scope="session")
def foreign_model(tmp_path_factory):
    """Same size and shape, different tokenizer (token texts permuted)."""
    d = tmp_path_factory.mktemp("foreign")
    return write_model(d / "foreign.gguf", ModelSpec(name="foreign", shuffle_vocab_seed=5), seed=0)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `python -m eft_local ...` as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "eft_local", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


def role_args(family, threads: int | None = 1) -> list[str]:
    """The three role flags of a synthetic family, as a user types them (``--threads`` unless None)."""
    roles = ["--base", str(family.base), "--chat", str(family.chat), "--reference", str(family.reference)]
    return roles if threads is None else [*roles, "--threads", str(threads)]


@pytest.fixture()
def models(family) -> list[str]:
    return role_args(family)


class ServerThread:
    """uvicorn serving ``app`` from a thread, on an ephemeral 127.0.0.1 port."""

    def __init__(self, app, config: uvicorn.Config | None = None) -> None:
        """``config``: how to serve (default: ``app`` as it is, uvicorn's defaults)."""
        from eft_local.cli.serve import bind

        self.app = app
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(config or uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < end, "server did not start"
            time.sleep(0.01)

    @property
    def worker(self):
        return self.app.state.worker

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def server_settings(**kw) -> dict:
    """Checked settings as `cli.resolve_settings` makes them: built-in defaults, greedy, 24 tokens."""
    from eft_local.settings import defaults

    return {**defaults(), "temperature": 0.0, "max_tokens": 24, "weights": {}, "draft_with": None, **kw}


async def wait_for(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Let the chat app run until ``condition()`` holds (Pilot pauses, not sleeps)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


# -- the slow tests: `scripts/test.sh --fast` (pytest -m "not slow") skips them; CI runs everything.
# Whole files (real weights, statistical distribution checks) and single tests that take seconds each.
# Measured per folder (issue 21 §3, CPU seconds on a 2-core machine): a test goes here when it costs
# about a CPU second or more (a process per case, the chat app with models, statistics), so that
# --fast stays within 3 minutes on idle cores.
SLOW_FILES = {
    "test_real_weights.py",
    "test_real_gemma.py",
    "test_distribution.py",
    "test_rpc.py",
    "test_rpc_bounds.py",
    "test_rpc_supervisor.py",
    "test_eval_harness.py",
    "test_markup_and_sizes.py",  # the chat app with models, at six sizes and with markup everywhere (~18 s CPU)
}
SLOW_TESTS = {
    "test_sampled_first_token_follows_two_delta_mixture",
    "test_speculative_step_with_any_proposal_follows_the_reference",  # statistical, 15 cases (~17 s CPU)
    "test_unusable_profile_path_is_one_line_naming_profile_role_and_path",  # a process per path (~5 s)
    "test_unusable_flag_path_is_one_line_naming_the_flag",  # a process per path (~3.5 s)
    # the chat app with models loaded (Pilot) or in a pseudo-terminal, ~1-3.5 s CPU each
    "test_streams_before_end_and_esc_keeps_partial_answer",
    "test_a_signal_that_ends_the_app_restores_the_terminal",
    "test_pastes_of_control_characters_never_end_the_real_app",
    "test_control_keys_typed_outside_a_paste_never_end_the_real_app",
    "test_narrow_lines_shorten_instead_of_being_cut",
    "test_nothing_that_matters_is_cut",
    "test_a_field_left_invalid_shows_the_value_in_force",
    "test_enter_in_a_control_goes_back_to_the_prompt",
    "test_history_saved_and_reopened",
    "test_control_keys_outside_a_paste_leave_the_prompt_clean",
    "test_alpha_beta_changes_reach_the_decoder",
    "test_compare_shows_each_delta_alone",
    "test_invalid_setting_is_flagged_and_not_used",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
