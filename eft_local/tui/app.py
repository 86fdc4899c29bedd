"""EftChatApp: chat with live EFT controls while the models load and answer off the UI thread.

The app holds the state (conversation, settings, engine session) and routes messages; the
pieces do the work: ``LoadPanel`` loads the models (``eft_local.engine.loading``), the
engine worker runs ``jobs.Job`` lists, ``AssistantMessage`` widgets receive their streams,
``MainArea`` fits the layout to the terminal, screens handle compare / history / help /
system prompt, ``export`` writes F4's file. Messages go up, attributes go down.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import events, work
from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from eft_local.engine.decoder import EftEngine
from eft_local.engine.loading import LoadOptions
from eft_local.engine.session import Session
from eft_local.mix.mixture import deltas_of
from eft_local.mix.params import SamplingParams
from eft_local.settings import SETTINGS
from eft_local.tui import delta, signals
from eft_local.tui.conversation import Conversation, Turn, last_code_block
from eft_local.tui.escape_keys import printable
from eft_local.tui.export import export_chat
from eft_local.tui.history import HistoryError, HistoryStore
from eft_local.tui.jobs import Job, JobDone, run_job
from eft_local.tui.keys import bindings
from eft_local.tui.screens.compare import CompareScreen
from eft_local.tui.screens.help import HelpScreen
from eft_local.tui.screens.history import HistoryScreen
from eft_local.tui.screens.system_prompt import SystemPromptScreen
from eft_local.tui.settings import ChatSettings
from eft_local.tui.stream import GenerationFinished, Pacer, StatsUpdated
from eft_local.tui.widgets.chat_view import AssistantMessage, ChatView
from eft_local.tui.widgets.fitted import Fitted
from eft_local.tui.widgets.key_footer import KeyFooter
from eft_local.tui.widgets.load_panel import ErrorPanel, LoadPanel
from eft_local.tui.widgets.main_area import MainArea
from eft_local.tui.widgets.prompt_input import PromptInput
from eft_local.tui.widgets.settings_panel import SettingsPanel
from eft_local.tui.widgets.status_bar import StatusBar

COMPACT_FOOTER = 100  # columns below which the footer's keys sit closer together


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
        welcome: str | None = None,
    ) -> None:
        super().__init__()
        self.welcome = welcome  # the first-run notice of the demo family (eft_local.models.demo)
        self.paths = {r: Path(p) for r, p in paths.items()} if paths else None
        self.load_error = load_error if load_error or paths else "no models given"
        self.load_options = LoadOptions(n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads, rpc=rpc or {})
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
        self.ended_by_signal: int | None = None
        self._uninstall_signals: Callable[[], None] = lambda: None

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:  # type: ignore[override]
        """Notices carry file names, errors and user text: shown as plain text unless asked."""
        super().notify(message, markup=markup, **kwargs)

    async def on_event(self, event: events.Event) -> None:
        """A paste is text for the focused widget, never keys: its control characters go."""
        if isinstance(event, events.Paste):
            event.text = printable(event.text)
        await super().on_event(event)

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with MainArea(id="main"):
            with Vertical(id="chat-column"):
                if self.load_error:
                    yield ErrorPanel(self.load_error, id="load-error")
                elif self.paths:
                    yield LoadPanel(self.paths, self.load_options, id="loading")
                if self.welcome and not self.load_error:
                    yield Static(self.welcome, id="welcome", markup=False)
                yield ChatView(id="chat")
                yield Fitted(delta.legend_forms, id="legend")
                yield PromptInput(id="prompt")
            yield SettingsPanel(self.settings, id="settings")
        yield StatusBar(id="status")
        yield KeyFooter(show_command_palette=False)  # Ctrl+P still opens it; its room goes to our keys

    def on_mount(self) -> None:
        self._uninstall_signals = signals.install(self._end_by_signal)
        self.query_one("#legend").display = False
        self.main_area.fit(self.size.width)
        self.query_one(Footer).compact = self.size.width < COMPACT_FOOTER
        self.prompt_input.focus()
        self._status(state="error" if self.load_error else "loading", settings=self.settings.describe_forms())
        try:
            self.history = HistoryStore(self._history_path)
        except Exception as e:  # a broken history file must not stop the chat
            self.notify(f"chat history disabled: {e}", severity="warning")

    def on_resize(self, event) -> None:
        self.main_area.fit(event.size.width)
        self.query_one(Footer).compact = event.size.width < COMPACT_FOOTER  # every key shows at 80 columns

    @property
    def main_area(self) -> MainArea:
        return self.query_one(MainArea)

    @property
    def chat_view(self) -> ChatView:
        return self.query_one("#chat", ChatView)

    @property
    def prompt_input(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def generating(self) -> bool:
        return self.busy > 0

    def _status(self, **kwargs: Any) -> None:
        self.query_one(StatusBar).set(**kwargs)

    # -- loading (LoadPanel's worker) ---------------------------------------------------------
    async def on_load_panel_loaded(self, message: LoadPanel.Loaded) -> None:
        await self.query("#loading").remove()
        self.engine = message.engine
        self.session = Session(message.engine, prompt_style=self.prompt_style)
        self._status(state="ready", context=self.engine.context_used())

    async def on_load_panel_failed(self, message: LoadPanel.Failed) -> None:
        await self.query("#loading").remove()
        self.load_error = message.error
        await self.query_one("#chat-column").mount(ErrorPanel(message.error, id="load-error"), before=0)
        self._status(state="error")

    # -- generation (the engine worker) -------------------------------------------------------
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
        self.prompt_input.clear()
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
        """One job after another; Esc cancels the worker, which each job checks between steps."""
        worker = get_current_worker()
        notify: Callable[[str], None] = lambda text: self.call_from_thread(self.notify, text)  # noqa: E731
        with self.session.lock:
            for job in jobs:
                cancel = lambda: worker.is_cancelled  # noqa: E731
                if not run_job(self.session, job, seed=self.seed, pacer=self.pacer, cancel=cancel, notify=notify):
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
            self.notify(result.error_text() or "generation failed", severity="error", timeout=8)
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
        elif self.main_area.uncover_chat():  # the controls covered the chat: back to it
            self.prompt_input.focus()
        elif self.focused is not self.prompt_input:
            self.prompt_input.focus()

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
        typed = self.prompt_input.text.strip()
        if typed:
            question, messages = typed, self.conv.messages(extra_user=typed)
        else:
            last_user = max((i for i, t in enumerate(self.conv.turns) if t.role == "user"), default=None)
            if last_user is None:
                self.notify("type a prompt first, then Ctrl+B compares base / chat / EFT")
                return
            question = self.conv.turns[last_user].content
            messages = Conversation(self.conv.system_prompt, self.conv.turns[: last_user + 1]).messages()
        screen = CompareScreen(question, self.settings, self.delta_view)
        await self.push_screen(screen)
        index = self._index()  # every column draws the same random numbers
        self._start([Job(messages, self.settings.config(sampling=s), index, widget) for s, widget in screen.runs()])

    def action_settings(self) -> None:
        panel = self.query_one(SettingsPanel)
        if panel.display and panel.has_focus_within:
            self.main_area.want_controls(False)
            self.prompt_input.focus()
        else:
            self.main_area.want_controls(True)
            self.query_one("#alpha").focus()

    def action_preset(self, name: str) -> None:
        self.query_one(SettingsPanel).apply_preset(name)

    def on_settings_panel_done(self, _: SettingsPanel.Done) -> None:
        self.main_area.uncover_chat()
        self.prompt_input.focus()

    def on_settings_panel_changed(self, message: SettingsPanel.Changed) -> None:
        self._status(settings=self.settings.describe_forms())

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
        self.prompt_input.focus()

    def action_history(self) -> None:
        if self.history is None:
            self.notify("chat history is disabled", severity="warning")
            return
        self.push_screen(HistoryScreen(self.history), self._open_chat)

    async def _open_chat(self, chat_id: int | None) -> None:
        if chat_id is None or self.generating or self.history is None:
            return
        try:
            conv = self.history.load(chat_id)
        except (HistoryError, KeyError) as e:  # corrupted or deleted meanwhile
            self.notify(str(e) if isinstance(e, HistoryError) else "that chat is gone", severity="error", timeout=10)
            return
        self.conv = conv
        await self.chat_view.show(self.conv)

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
        notice = export_chat(self.conv)
        self.notify(notice.message, severity=notice.severity, timeout=notice.timeout)  # type: ignore[arg-type]

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- shutdown ----------------------------------------------------------------------------
    def _end_by_signal(self, signum: int) -> None:
        """SIGTERM, SIGHUP, SIGINT, SIGQUIT: quit as Ctrl+Q does (Textual restores the terminal)."""
        self.ended_by_signal = signum
        self.exit()

    def on_unmount(self) -> None:
        """Stop the workers at their next step, then free the models (never under a running decode)."""
        self._uninstall_signals()
        self.workers.cancel_group(self, "engine")
        if self.session is not None and self.session.close(timeout=30):
            self.engine = self.session = None
