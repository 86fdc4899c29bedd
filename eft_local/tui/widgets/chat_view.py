"""The message list: user and assistant messages, streamed Markdown or delta colouring."""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Label, Markdown, Static
from textual.widgets.markdown import MarkdownStream

from eft_local.tui import delta
from eft_local.tui.conversation import Conversation, Turn
from eft_local.tui.stream import GenerationFinished, TokensArrived


def _keep_line_breaks(state: StateCore) -> None:
    for token in state.tokens:
        for child in token.children or ():
            if child.type == "softbreak":
                child.type = "hardbreak"


def chat_markdown_parser() -> MarkdownIt:
    """Markdown as a chat shows it: a single line break stays a line break (a poem, an
    address, a list of steps without bullets), as in the delta view and the export."""
    parser = MarkdownIt("gfm-like")
    parser.core.ruler.push("keep_line_breaks", _keep_line_breaks)
    return parser


def chat_markdown(text: str) -> Markdown:
    return Markdown(text, classes="body", parser_factory=chat_markdown_parser)


class UserMessage(Vertical):
    def __init__(self, turn: Turn) -> None:
        super().__init__(classes="message user")
        self.turn = turn

    def compose(self) -> ComposeResult:
        yield Label("you", classes="who")
        yield chat_markdown(self.turn.content)


class AssistantMessage(Vertical):
    """One answer. Receives TokensArrived/GenerationFinished straight from the worker."""

    def __init__(self, turn: Turn, *, delta_view: bool = False, streaming: bool = False) -> None:
        super().__init__(classes="message assistant")
        self.turn = turn
        self.delta_view = delta_view
        self.streaming = streaming
        self._stream: MarkdownStream | None = None
        self.colored = Text()
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Label(Content(self._title()), classes="who")  # Content: info/errors are never markup
        yield chat_markdown(self.turn.content)
        yield Static(delta.render(self.turn.spans), classes="delta")
        yield Label(Content(self._footer()), classes="note")

    def on_mount(self) -> None:
        self.colored = delta.render(self.turn.spans)
        self._show()
        if self.streaming:
            self._stream = Markdown.get_stream(self.query_one(Markdown))

    def _title(self) -> str:
        return "assistant" + (f"  ·  {self.turn.info}" if self.turn.info else "")

    def _footer(self) -> str:
        if self.streaming:
            return "▍ generating…  (Esc stops)" if self.turn.content else "▍ waiting for the models…  (Esc stops)"
        note = "■ stopped — partial answer" if self.turn.stopped else ""
        if self.error:
            note = f"✗ {self.error}"
        if self.delta_view and self.turn.spans:
            note = "  ·  ".join(x for x in (note, delta.summary(self.turn.spans)) if x)
        return note

    def _show(self) -> None:
        self.query_one(Markdown).display = not self.delta_view
        self.query_one(".delta").display = self.delta_view
        note = self._footer()
        label = self.query_one(".note", Label)
        label.update(Content(note))
        label.display = bool(note)
        self.set_class(self.turn.stopped, "stopped")

    async def on_tokens_arrived(self, message: TokensArrived) -> None:
        message.stop()
        first = not self.turn.content
        self.turn.content += message.text
        if first:
            self.query_one(".note", Label).update(Content(self._footer()))
        self.turn.spans.extend(message.spans)
        delta.append_spans(self.colored, message.spans)
        if self.delta_view:
            self.query_one(".delta", Static).update(self.colored)
        elif self._stream is not None:
            await self._stream.write(message.text)

    async def on_generation_finished(self, message: GenerationFinished) -> None:
        """Finish with one full Markdown update (streamed code fences can render blank)."""
        self.streaming = False
        result = message.result
        self.turn.stopped = result.reason == "cancelled"
        if result.reason != "error":
            done = f"{result.stats.n_tokens} tok · {result.stats.tokens_per_second:,.1f} tok/s"
            self.turn.info = f"{self.turn.info} · {done}" if self.turn.info else done
        else:
            self.error = result.error or "generation failed"
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.query_one(".who", Label).update(Content(self._title()))
        await self.query_one(Markdown).update(self.turn.content)
        self._show()

    async def set_delta_view(self, on: bool) -> None:
        if on == self.delta_view:
            return
        self.delta_view = on
        if on:
            self.query_one(".delta", Static).update(self.colored)
        else:
            if self._stream is not None:
                await self._stream.stop()
            await self.query_one(Markdown).update(self.turn.content)
            if self.streaming:
                self._stream = Markdown.get_stream(self.query_one(Markdown))
        self._show()


WELCOME = """\
[b]Emulated fine-tuning chat.[/]  The large [b]base[/] model brings the knowledge, the small [b]chat[/] model the behaviour.
Type a message and press [b]Enter[/]. Change α/β/temperature in the EFT controls (Ctrl+G, or F5/F6/F7 presets) — the next answer uses them.
[b]Ctrl+T[/] colours tokens by how much fine-tuning changed them · [b]Ctrl+B[/] compares base / chat / EFT side by side · [b]F1[/] all keys."""


class ChatView(VerticalScroll):
    """Scrolls with new text (anchored) until the user scrolls up."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delta_view = False

    def compose(self) -> ComposeResult:
        yield Static(WELCOME, id="welcome")

    def on_mount(self) -> None:
        self.anchor()

    async def show(self, conv: Conversation) -> None:
        await self.remove_children()
        widgets = [self._widget(t) for t in conv.turns] or [Static(WELCOME, id="welcome")]
        await self.mount_all(widgets)
        self.anchor()

    def _widget(self, turn: Turn) -> UserMessage | AssistantMessage:
        if turn.role == "user":
            return UserMessage(turn)
        return AssistantMessage(turn, delta_view=self.delta_view)

    async def add_user(self, turn: Turn) -> None:
        await self.query("#welcome").remove()
        await self.mount(UserMessage(turn))
        self.anchor()

    async def add_assistant(self, turn: Turn) -> AssistantMessage:
        widget = AssistantMessage(turn, delta_view=self.delta_view, streaming=True)
        await self.mount(widget)
        self.anchor()
        return widget

    async def remove_last(self, n: int = 1) -> None:
        for child in list(self.query_children(".message"))[-n:]:
            await child.remove()

    async def set_delta_view(self, on: bool) -> None:
        self.delta_view = on
        for widget in self.query(AssistantMessage):
            await widget.set_delta_view(on)
