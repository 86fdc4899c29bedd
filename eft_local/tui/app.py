"""EftChatApp: load three models off the UI thread, then chat with live EFT controls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from eft_local.engine.config import GenerationConfig
from eft_local.engine.decoder import EftEngine
from eft_local.engine.events import FinishedEvent, GenStats
from eft_local.engine.session import Session, rng_for
from eft_local.errors import UserError
from eft_local.mix.mixture import deltas_of
from eft_local.mix.params import SamplingParams
from eft_local.settings import SETTINGS
from eft_local.tui import delta, signals
from eft_local.tui.conversation import Conversation, Turn, last_code_block
from eft_local.tui.history import HistoryError, HistoryStore
from eft_local.tui.keys import bindings
from eft_local.tui.screens.compare import CompareScreen
from eft_local.tui.screens.help import HelpScreen
from eft_local.tui.screens.history import HistoryScreen
from eft_local.tui.screens.system_prompt import SystemPromptScreen
from eft_local.tui.settings import ChatSettings
from eft_local.tui.stream import GenerationFinished, Pacer, StatsUpdated, run_stream
from eft_local.tui.widgets.chat_view import AssistantMessage, ChatView
from eft_local.tui.widgets.load_panel import ErrorPanel, LoadPanel
from eft_local.tui.widgets.prompt_input import PromptInput
from eft_local.tui.widgets.settings_panel import SettingsPanel
from eft_local.tui.widgets.status_bar import StatusBar

NARROW = 72  # columns: below this the EFT controls are hidden (Ctrl+G shows them full width)
LOAD_HINT = (
    "Check the paths (--base/--chat/--reference) or the profile in models.toml, or download a profile's "
    "files with [b]eft-local download NAME[/].  [dim]Ctrl+Q quits.[/]"
)


def export_folders() -> list[Path | str]:
    """Where F4 may write: the working directory, else home, else the temp directory.
    A str in the list says why the working directory is unusable."""
    import tempfile

    folders: list[Path | str] = []
    try:
        folders.append(Path.cwd())
    except OSError as e:  # deleted while the app runs
        folders.append(f"the working directory is gone ({e.strerror or e})")
    folders += [Path.home(), Path(tempfile.gettempdir())]
    return folders


def write_new(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` to a new file in ``folder`` (never over an existing one)."""
    stem, suffix = name.rsplit(".", 1)
    for i in range(100):
        path = folder / (name if i == 0 else f"{stem}-{i}.{suffix}")
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:
            continue
        return path
    raise OSError(f"too many exports named {stem}-*.{suffix}")


@dataclass
class Job:
    """One generation for the worker: what to ask and which widget receives the stream."""

    messages: list[dict[str, str]]
    config: GenerationConfig
    index: int  # generation number: with --seed S it draws from rng_for(S, index)
    target: AssistantMessage


class LoadProgress(Message):
    def __init__(self, role: str, fraction: float) -> None:
        super().__init__()
        self.role, self.fraction = role, fraction


class LoadDone(Message):
    def __init__(self, engine: EftEngine | None, error: str | None) -> None:
        super().__init__()
        self.engine, self.error = engine, error


class JobDone(Message):
    pass


def compare_variants(settings: ChatSettings) -> list[tuple[str, SamplingParams]]:
    """Compare columns: base alone, chat alone, each further delta alone (on the base), EFT."""
    s = settings.sampling
    out = [("base alone  α=0 β=1", settings.corner(0.0, 1.0)), ("chat alone  α=1 β=0", settings.corner(1.0, 0.0))]
    for name in settings.deltas:
        w = s.weights.get(name, 1.0)
        out.append((f"{name} alone  β={s.beta:g} {name}={w:g}", settings.corner(0.0, s.beta, only=name)))
    out.append((f"EFT  {settings.mix()}", s))
    return out


class EftChatApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "eft-local"
    BINDINGS = bindings()

    def __init__(
        self,
        *,
        paths: dict[str, Path] | None,
        load_error: str | None = None,
        n_ctx: int = SETTINGS["n_ctx"].default,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        sampling: SamplingParams | None = None,
        draft_tokens: int | None = SETTINGS["draft_tokens"].default,
        max_tokens: int = SETTINGS["max_tokens"].default,
        prompt_style: str = SETTINGS["prompt_style"].default,
        seed: int | None = None,
        system_prompt: str | None = None,
        profile_name: str | None = None,
        history_path: Path | None = None,
        stop: tuple[str, ...] = (),
        rpc: dict[str, list[str]] | None = None,
        draft_with: str | None = None,
    ) -> None:
        super().__init__()
        self.paths = {r: Path(p) for r, p in paths.items()} if paths else None
        self.load_error = load_error if load_error or paths else "no models given"
        self.load_args = dict(n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads, rpc=rpc or {})
        deltas = tuple(d.name for d in deltas_of(self.paths or {}) if d.name != "chat")
        self.settings = ChatSettings.create(sampling, draft_tokens, max_tokens, deltas, stop, draft_with)
        self.prompt_style = prompt_style
        self.seed = seed
        self.conv = Conversation(system_prompt=system_prompt or "")
        self.sub_title = profile_name or ("custom models" if paths else "")
        self.engine: EftEngine | None = None
        self.session: Session | None = None  # prompts, seeds and the engine lock (shared with the server)
        self.busy = 0  # jobs queued or running on the worker
        self.pacer = Pacer()
        self._pacer_timer = None
        self.n_generations = 0
        self.delta_view = False
        self._history_path = history_path
        self.history: HistoryStore | None = None
        self._narrow = False
        self._settings_wanted = True  # the user's choice for the EFT controls when there is room
        self.ended_by_signal: int | None = None
        self._uninstall_signals: Callable[[], None] = lambda: None

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:  # type: ignore[override]
        """Notices carry file names, errors and user text: shown as plain text unless asked."""
        super().notify(message, markup=markup, **kwargs)

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                if self.load_error:
                    yield ErrorPanel(self.load_error, LOAD_HINT, id="load-error")
                elif self.paths:
                    yield LoadPanel(self.paths, self.load_args["n_gpu_layers"], self.load_args["rpc"], id="loading")
                yield ChatView(id="chat")
                yield Static(delta.legend(), id="legend")
                yield PromptInput(id="prompt")
            yield SettingsPanel(self.settings, id="settings")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self._uninstall_signals = signals.install(self._end_by_signal)
        self.query_one("#legend").display = False
        self._fit(self.size.width)
        self.query_one(PromptInput).focus()
        self._status(state="error" if self.load_error else "loading", settings=self.settings.describe())
        try:
            self.history = HistoryStore(self._history_path)
        except Exception as e:  # a broken history file must not stop the chat
            self.notify(f"chat history disabled: {e}", severity="warning")
        if not self.load_error:
            self._load()

    def on_resize(self, event) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        """Narrow terminals: the chat gets the whole width; the EFT controls show on demand."""
        narrow = width < NARROW
        if narrow != self._narrow:
            self._narrow = narrow
            self.query_one("#main").set_class(narrow, "-narrow")
            self._show_settings(not narrow and self._settings_wanted)

    def _show_settings(self, on: bool) -> None:
        self.query_one(SettingsPanel).display = on
        self.query_one("#chat-column").display = not (on and self._narrow)

    @property
    def chat_view(self) -> ChatView:
        return self.query_one("#chat", ChatView)

    @property
    def generating(self) -> bool:
        return self.busy > 0

    def _status(self, **kwargs: Any) -> None:
        self.query_one(StatusBar).set(**kwargs)

    # -- loading -----------------------------------------------------------------------------
    @work(thread=True, group="load", exit_on_error=False)
    def _load(self) -> None:
        assert self.paths is not None
        try:
            engine = EftEngine.load(self.paths, **self.load_args, on_progress=lambda r, f: self.post_message(LoadProgress(r, f)))
        except UserError as e:
            self.post_message(LoadDone(None, str(e)))
        except Exception as e:  # llama.cpp failures: one line, no traceback
            self.post_message(LoadDone(None, f"{type(e).__name__}: {e}"))
        else:
            self.post_message(LoadDone(engine, None))

    def on_load_progress(self, message: LoadProgress) -> None:
        for panel in self.query(LoadPanel):
            panel.progress(message.role, message.fraction)

    async def on_load_done(self, message: LoadDone) -> None:
        await self.query("#loading").remove()
        if message.error:
            self.load_error = message.error
            await self.query_one("#chat-column").mount(ErrorPanel(message.error, LOAD_HINT, id="load-error"), before=0)
            self._status(state="error")
            return
        self.engine = message.engine
        self.session = Session(message.engine, prompt_style=self.prompt_style)
        self._status(state="ready", context=self.engine.context_used())

    # -- generation --------------------------------------------------------------------------
    def _can_generate(self) -> bool:
        if self.engine is None:
            self.notify(self.load_error or "models are still loading…", severity="warning")
            return False
        if self.generating:
            self.notify("still generating — Esc stops", severity="warning")
            return False
        return True

    def _index(self) -> int:
        self.n_generations += 1
        return self.n_generations - 1

    async def on_prompt_input_submitted(self, message: PromptInput.Submitted) -> None:
        if not self._can_generate():
            return
        self.query_one(PromptInput).clear()
        turn = Turn("user", message.text.strip())
        self.conv.turns.append(turn)
        await self.chat_view.add_user(turn)
        await self._answer()

    async def _answer(self) -> None:
        messages = self.conv.messages()
        turn = Turn("assistant", "", info=self.settings.describe())
        self.conv.turns.append(turn)
        widget = await self.chat_view.add_assistant(turn)
        self._start([Job(messages, self.settings.config(), self._index(), widget)])

    def _start(self, jobs: list[Job]) -> None:
        self.busy += len(jobs)
        self._status(state="generating")
        self.pacer = Pacer()
        if self._pacer_timer is None:
            self._pacer_timer = self.set_interval(0.25, lambda: self.pacer.sample())
        self._run_jobs(jobs)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _run_jobs(self, jobs: list[Job]) -> None:
        worker = get_current_worker()
        with self.session.lock:
            for job in jobs:
                self._run_job(job, lambda: worker.is_cancelled)

    def _run_job(self, job: Job, cancel) -> None:
        """The job ends when its GenerationFinished reaches the app (after the widget showed it),
        or with a JobDone when the widget is gone (closed compare screen, new chat)."""
        delivered = False

        def post(message: Message) -> None:
            nonlocal delivered
            ok = job.target.post_message(message)
            if isinstance(message, GenerationFinished):
                delivered = ok

        try:
            prompt, dropped = self.session.fit(job.messages, job.config.max_tokens)
            if dropped:
                self.call_from_thread(self.notify, f"context full: the oldest {dropped} message(s) are left out of this answer")
            rng = rng_for(self.seed, job.index)
            run_stream(self.session, prompt, job.config, rng, cancel, post, job.target, pacer=self.pacer)
        except Exception as e:  # prompt/template errors or llama.cpp failures end this answer only
            text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            post(GenerationFinished(job.target, FinishedEvent("error", "", [], GenStats(), text), {}))
        finally:
            if not delivered:
                self.post_message(JobDone())

    def on_job_done(self, _: JobDone) -> None:
        self._job_ended()

    def _job_ended(self) -> None:
        self.busy = max(0, self.busy - 1)
        if not self.busy:
            self._status(state="ready")
            if self._pacer_timer is not None:
                self._pacer_timer.stop()
                self._pacer_timer = None

    def on_stats_updated(self, message: StatsUpdated) -> None:
        self._status(stats=message.stats, context=message.context)

    def on_generation_finished(self, message: GenerationFinished) -> None:
        result = message.result
        self._status(stats=result.stats, context=message.context or None)
        self._job_ended()
        if result.reason == "error":
            self.notify(result.error or "generation failed", severity="error", timeout=8)
        if message.target.turn in self.conv.turns:  # a chat answer (compare answers are not kept)
            if result.reason == "error":
                self.conv.turns.remove(message.target.turn)
            self._save()

    def _save(self) -> None:
        if self.history is not None and self.conv.turns:
            try:
                self.history.save(self.conv)
            except Exception as e:
                self.notify(f"could not save chat history: {e}", severity="warning")

    # -- actions -----------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.generating:
            self.workers.cancel_group(self, "engine")
            self._status(state="stopping")
        elif self._narrow and self.query_one(SettingsPanel).display:
            self._show_settings(False)  # the controls covered the chat: back to it
            self.query_one(PromptInput).focus()
        elif self.focused is not self.query_one(PromptInput):
            self.query_one(PromptInput).focus()

    async def action_regenerate(self) -> None:
        if not self._can_generate():
            return
        if self.conv.turns and self.conv.turns[-1].role == "assistant":
            self.conv.turns.pop()
            await self.chat_view.remove_last()
        if not self.conv.turns:
            self.notify("nothing to regenerate yet")
            return
        await self._answer()

    async def action_toggle_delta(self) -> None:
        self.delta_view = not self.delta_view
        self.query_one("#legend").display = self.delta_view
        await self.chat_view.set_delta_view(self.delta_view)
        for widget in self.screen.query(AssistantMessage):
            await widget.set_delta_view(self.delta_view)

    async def action_compare(self) -> None:
        if not self._can_generate():
            return
        prompt_box = self.query_one(PromptInput)
        typed = prompt_box.text.strip()
        if typed:
            question, messages = typed, self.conv.messages(extra_user=typed)
        else:
            last_user = max((i for i, t in enumerate(self.conv.turns) if t.role == "user"), default=None)
            if last_user is None:
                self.notify("type a prompt first, then Ctrl+B compares base / chat / EFT")
                return
            question = self.conv.turns[last_user].content
            messages = Conversation(self.conv.system_prompt, self.conv.turns[: last_user + 1]).messages()
        variants = compare_variants(self.settings)
        turns = [(title, Turn("assistant", "")) for title, _ in variants]
        screen = CompareScreen(question, turns, self.delta_view)
        await self.push_screen(screen)
        index = self._index()
        jobs = [
            Job(messages, self.settings.config(sampling=sampling), index, w) for (_, sampling), w in zip(variants, screen.answers)
        ]
        self._start(jobs)

    def action_settings(self) -> None:
        panel = self.query_one(SettingsPanel)
        if panel.display and panel.has_focus_within:
            self._settings_wanted = False
            self._show_settings(False)
            self.query_one(PromptInput).focus()
        else:
            self._settings_wanted = True
            self._show_settings(True)
            self.query_one("#alpha").focus()

    def action_preset(self, name: str) -> None:
        self.query_one(SettingsPanel).apply_preset(name)

    def on_settings_panel_changed(self, message: SettingsPanel.Changed) -> None:
        self._status(settings=self.settings.describe())

    def action_system_prompt(self) -> None:
        def done(text: str | None) -> None:
            if text is not None:
                self.conv.set_system_prompt(text)
                self._save()
                self.notify("system prompt set — applies from the next answer" if text else "system prompt cleared")

        self.push_screen(SystemPromptScreen(self.conv.system_prompt), done)

    async def action_new_chat(self) -> None:
        if self.generating:
            self.notify("still generating — Esc stops", severity="warning")
            return
        self.conv = Conversation(system_prompt=self.conv.system_prompt)
        await self.chat_view.show(self.conv)
        self.query_one(PromptInput).focus()

    def action_history(self) -> None:
        if self.history is None:
            self.notify("chat history is disabled", severity="warning")
            return

        async def done(chat_id: int | None) -> None:
            if chat_id is None or self.generating:
                return
            try:
                conv = self.history.load(chat_id)
            except (HistoryError, KeyError) as e:  # corrupted or deleted meanwhile
                self.notify(str(e) if isinstance(e, HistoryError) else "that chat is gone", severity="error", timeout=10)
                return
            self.conv = conv
            await self.chat_view.show(self.conv)

        self.push_screen(HistoryScreen(self.history), done)

    def action_copy_answer(self) -> None:
        turn = self.conv.last_assistant()
        if turn is None or not turn.content:
            self.notify("no answer to copy yet")
            return
        self.copy_to_clipboard(turn.content)
        self.notify(f"copied the last answer ({len(turn.content)} characters)")

    def action_copy_code(self) -> None:
        answers = [t.content for t in reversed(self.conv.turns) if t.role == "assistant"]
        code = next((c for c in map(last_code_block, answers) if c is not None), None)
        if code is None:
            self.notify("no code block in the answers")
            return
        self.copy_to_clipboard(code)
        self.notify(f"copied a code block ({len(code.splitlines())} lines)")

    def action_export(self) -> None:
        if not self.conv.turns:
            self.notify("nothing to export yet")
            return
        name = f"eft-chat-{datetime.now():%Y%m%d-%H%M%S}.md"
        text = self.conv.to_markdown()
        problem = None
        for folder in export_folders():
            if isinstance(folder, str):  # why the working directory can't be used
                problem = folder
                continue
            try:
                path = write_new(folder, name, text)
            except OSError as e:
                problem = problem or f"can't write to {folder}: {e.strerror or e}"
                continue
            if problem:
                self.notify(f"{problem}; exported to {path} instead", severity="warning", timeout=10)
            else:
                self.notify(f"exported to {path}")
            return
        self.notify(
            f"could not export: {problem}; free some space or fix the permissions, or copy the answer with Ctrl+Y",
            severity="error",
            timeout=10,
        )

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- shutdown ----------------------------------------------------------------------------
    def _end_by_signal(self, signum: int) -> None:
        """SIGTERM, SIGHUP, SIGINT, SIGQUIT: quit as Ctrl+Q does (Textual restores the terminal)."""
        self.ended_by_signal = signum
        self.exit()

    def on_unmount(self) -> None:
        """Stop the worker at its next step, then free the models (never under a running decode)."""
        self._uninstall_signals()
        self.workers.cancel_group(self, "engine")
        if self.session is not None and self.session.close(timeout=30):
            self.engine = self.session = None
