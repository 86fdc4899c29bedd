"""``scripts/miniature.py report``: the paper's experiment in miniature, run through eft-local's CLI.

Every number comes from ``eft-local run`` / ``eft-local score`` subprocesses (a real client of the
CLI): greedy replies to questions from ``world.jsonl`` at grid points of (alpha, beta), a weight
sweep between the two behaviours, speed (naive vs speculative), and the log-probability margin
of the right value over the attribute's other values. Writes ``docs/miniature.md`` and a PNG.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from miniature.world import ATTRIBUTES, CHAT_CLOSING, SENTENCE

SPLITS = {  # column name -> seen_by
    "large only": ["large-base"],
    "both bases": ["small-base", "large-base"],
    "fine-tuned": ["small-base", "large-base", "small-chat", "small-chat-2"],
}
BETAS = (0.0, 0.5, 1.0, 1.5, 2.0)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_TOKENS = 32


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pick(world: list[dict], n: int) -> list[tuple[str, dict]]:
    """The first ``n`` facts of each split, in world order (entities are in random order)."""
    out = []
    for split, seen in SPLITS.items():
        out += [(split, r) for r in [r for r in world if r["seen_by"] == seen][:n]]
    return out


def value_prefix(row: dict) -> str:
    """The reply up to the value: ``Name lives in``."""
    return SENTENCE[row["attribute"]].format(name=row["entity"], value="\0").split("\0")[0].rstrip()


class Cli:
    def __init__(self, exe: list[str], model_flags: list[str], work: Path):
        self.exe, self.model_flags, self.work = exe, model_flags, work
        self.seconds: dict[str, float] = {}

    def __call__(self, cmd: str, name: str, rows: list[dict], *flags: str) -> list[dict]:
        src, out = self.work / f"{name}.jsonl", self.work / f"{name}.out.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        argv = [*self.exe, cmd, "--prompt-file", str(src), "--output", str(out), *self.model_flags, *flags]
        log(f"$ eft-local {' '.join(argv[len(self.exe) :])}")
        t = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True)
        self.seconds[name] = time.monotonic() - t
        if p.returncode != 0:
            raise SystemExit(f"eft-local {cmd} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        log("  " + (p.stderr.strip().splitlines() or [""])[-1])
        return [json.loads(line) for line in out.read_text().splitlines()]


def _agg(rows: list[dict], items: dict, key) -> dict:
    acc: dict = defaultdict(lambda: defaultdict(float))
    for o in rows:
        split, fact = items[o["id"]]
        a = acc[(key(o), split)]
        text = o.get("text", "")
        a["n"] += 1
        a["exact"] += text == fact["answer"]
        a["value"] += re.search(rf"(?<!\w){re.escape(fact['value'])}(?!\w)", text) is not None
        a["style"] += text.endswith(CHAT_CLOSING)
        a["bare"] += text in ATTRIBUTES[fact["attribute"]]  # small-chat-2's style: a bare value (any)
    return acc


def _speed(rows: list[dict]) -> dict:
    toks = sum(o["n_tokens"] for o in rows)
    secs = sum(o["n_tokens"] / o["tokens_per_second"] for o in rows if o.get("tokens_per_second"))
    drafted = sum(o.get("drafted", 0) for o in rows)
    return {
        "tok_s": toks / secs if secs else 0.0,
        "acceptance": sum(o.get("accepted", 0) for o in rows) / drafted if drafted else None,
        "tokens": toks,
    }


def main(args) -> int:
    from eft_local.models import demo

    fam = Path(args.models_dir) if args.models_dir else demo.family_dir()
    world = [json.loads(line) for line in open(fam / "world.jsonl", encoding="utf-8")]
    exe = [args.eft_local] if args.eft_local else [str(Path(sys.executable).with_name("eft-local"))]
    if not Path(exe[0]).exists():
        exe = [sys.executable, "-m", "eft_local"]
    if args.models_dir:
        flags = [
            "--base",
            str(fam / "large-base.gguf"),
            "--chat",
            str(fam / "small-chat.gguf"),
            "--reference",
            str(fam / "small-base.gguf"),
            "--delta",
            f"bare={fam / 'small-chat-2.gguf'}",
        ]
    else:
        flags = ["--profile", demo.PROFILE]
    items = dict(enumerate(pick(world, args.n)))
    prompts = [{"id": i, "prompt": f["question"]} for i, (_, f) in items.items()]
    common = ["--temperature", "0", "--max-tokens", str(MAX_TOKENS), "--seed", "0", "--n-ctx", "512"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="miniature-report-") as tmp:
        cli = Cli(exe, flags, Path(tmp))
        grid = cli(
            "run",
            "grid",
            prompts,
            *common,
            "--weight",
            "bare=0",
            "--grid",
            "alpha=0,1",
            "--grid",
            "beta=" + ",".join(map(str, BETAS)),
        )
        wrows = [
            {"id": i * 100 + k, "prompt": p["prompt"], "alpha": 1 - w, "beta": 1.0, "weights": {"bare": w}}
            for i, p in enumerate(prompts)
            for k, w in enumerate(WEIGHTS)
        ]
        wout = cli("run", "weights", wrows, *common)
        for o in wout:
            o["w"], o["id"] = WEIGHTS[o["id"] % 100], o["id"] // 100
        large = [p for p in prompts if items[p["id"]][0] == "large only"]
        speed = {}
        for temp in ("0", "1"):
            for mode, extra in (("naive", ["--draft-tokens", "0"]), ("speculative", [])):
                rows = cli(
                    "run",
                    f"speed-{temp}-{mode}",
                    large,
                    "--temperature",
                    temp,
                    "--max-tokens",
                    str(MAX_TOKENS),
                    "--seed",
                    "0",
                    "--n-ctx",
                    "512",
                    "--weight",
                    "bare=0",
                    "--parallel",
                    "1",
                    *extra,
                )
                speed[(temp, mode)] = _speed(rows)
        speed[("0", "small-chat alone")] = _speed(
            cli("run", "speed-chat", large, *common, "--weight", "bare=0", "--alpha", "1", "--beta", "0", "--parallel", "1")
        )
        sitems = []
        for i, (_, f) in items.items():
            pre = value_prefix(f)
            sitems.append(
                {
                    "id": i,
                    "messages": [{"role": "user", "content": f["question"]}],
                    "continuations": [f"{pre} {v}" for v in ATTRIBUTES[f["attribute"]]],
                }
            )
        scores = cli(
            "score", "score", sitems, "--weight", "bare=0", "--grid", "alpha=0,1", "--grid", "beta=" + ",".join(map(str, BETAS))
        )
        seconds = dict(cli.seconds)
    acc = _agg(grid, items, lambda o: (o["alpha"], o["beta"]))
    wacc = _agg(wout, items, lambda o: o["w"])
    margins: dict = defaultdict(list)
    for o in scores:
        split, f = items[o["id"]]
        lps = [c["logprob"] for c in o["continuations"]]
        right = ATTRIBUTES[f["attribute"]].index(f["value"])
        margins[((o["alpha"], o["beta"]), split)].append(lps[right] - max(lp for k, lp in enumerate(lps) if k != right))
    manifest = json.loads((fam / "manifest.json").read_text()) if (fam / "manifest.json").is_file() else {}
    result = {
        "acc": acc,
        "wacc": wacc,
        "margins": margins,
        "speed": speed,
        "n": args.n,
        "family": str(fam),
        "manifest": manifest,
        "seconds": round(time.monotonic() - t0, 1),
        "run_seconds": seconds,
    }
    png = args.out.with_suffix(".png")
    _plot(result, png)
    args.out.write_text(_markdown(result, png.name, flags))
    log(f"wrote {args.out} and {png}")
    return 0


def _where(family: str) -> str:
    from eft_local.models import demo

    if Path(family) == demo.shipped_dir():
        return "the shipped family (`eft_local/models/miniature/`)"
    if Path(family) == demo.built_dir():
        return "the user's build (`~/.cache/eft-local/miniature/`)"
    return f"`{family}`"


def _pct(a: dict, k: str) -> str:
    return f"{100 * a[k] / a['n']:.0f}" if a.get("n") else "–"


def _margin(ms: list[float]) -> str:
    return f"{sum(ms) / len(ms):+.1f} ({100 * sum(m > 0 for m in ms) / len(ms):.0f} %)" if ms else "–"


def _markdown(r: dict, png: str, flags: list[str]) -> str:
    acc, margins, splits = r["acc"], r["margins"], list(SPLITS)
    mixes = [
        ("small-chat alone (α=1, β=0)", (1.0, 0.0)),
        ("large-base alone (α=0, β=1)", (0.0, 1.0)),
        ("small-base alone (α=0, β=0)", (0.0, 0.0)),
        ("**EFT up-scaled (α=β=1)**", (1.0, 1.0)),
    ]
    mixes += [(f"β sweep: α=1, β={b:g}", (1.0, b)) for b in BETAS]
    m = r["manifest"]
    lines = [
        "# The miniature EFT experiment",
        "",
        "Written by `python scripts/miniature.py report` from one run; every number below comes from",
        "`eft-local run` / `eft-local score` subprocesses on",
        f"{_where(r['family'])} ({'quick' if m.get('quick') else 'full'} build, seed {m.get('seed', '?')}; model flags `{' '.join(flags)}`).",
        f"{r['n']} questions per split from `world.jsonl`, greedy (`--temperature 0`), at most {MAX_TOKENS} tokens.",
        "See [the design](#how-the-family-is-built) below.",
        "",
        "Columns by `seen_by`: **large only** = facts only large-base was pre-trained on; **both bases** =",
        "facts both bases saw, held out of the chat fine-tunes; **fine-tuned** = facts the chat models were tuned on.",
        "*exact*: the reply equals the expected `answer` (fact and style at once); *value*: the right value",
        f'appears; *style*: the reply ends with "{CHAT_CLOSING}" (small-chat\'s behaviour); *margin*: mean',
        "log-probability (`eft-local score`) of the reply with the right value minus the best other value",
        "of that attribute, and the share of questions where it is positive.",
        "",
        "| mix | "
        + " | ".join(f"exact % {s}" for s in splits)
        + " | "
        + " | ".join(f"value % {s}" for s in splits[:2])
        + " | "
        + " | ".join(f"style % {s}" for s in splits[:2])
        + " | "
        + " | ".join(f"margin {s}" for s in splits[:2])
        + " |",
        "|---|" + "---:|" * (len(splits) + 6),
    ]
    for label, key in mixes:
        cells = [_pct(acc[(key, s)], "exact") for s in splits] + [_pct(acc[(key, s)], "value") for s in splits[:2]]
        cells += [_pct(acc[(key, s)], "style") for s in splits[:2]] + [_margin(margins[(key, s)]) for s in splits[:2]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Weight sweep between the two behaviours** (β = 1, α = 1 − w for small-chat, w for the `bare` delta",
        "small-chat-2, which answers with the bare value only; per-row overrides in one `eft-local run`):",
        "",
        "| w (bare) | exact % large only | bare-value style % large only | closing style % large only | value % large only | closing style % both bases | bare % both bases |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in WEIGHTS:
        a, b = r["wacc"][(w, "large only")], r["wacc"][(w, "both bases")]
        lines.append(
            f"| {w:g} | {_pct(a, 'exact')} | {_pct(a, 'bare')} | {_pct(a, 'style')} | {_pct(a, 'value')} | {_pct(b, 'style')} | {_pct(b, 'bare')} |"
        )
    lines += [
        "",
        "**Speed** on the large-only questions (α = β = 1, `--parallel 1`, one prompt at a time; generation",
        "tok/s as `eft-local run` reports it per row, prompt processing excluded; acceptance = accepted / drafted):",
        "",
        "| decoding | tok/s | acceptance | tokens |",
        "|---|---:|---:|---:|",
    ]
    for (temp, mode), s in r["speed"].items():
        label = f"T={temp}, {mode}" if mode != "small-chat alone" else "T=0, small-chat alone (β=0: one model)"
        accp = f"{100 * s['acceptance']:.0f} %" if s["acceptance"] is not None else "–"
        lines.append(f"| {label} | {s['tok_s']:.0f} | {accp} | {s['tokens']} |")
    tr = m.get("training", {})
    lines += [
        "",
        f"![EFT in miniature]({png})",
        "",
        f"The report took {r['seconds']:.0f} s. The build's wall time (`manifest.json`): {m.get('build_seconds', '?')} s on "
        f"{m.get('machine', '?')}, built {m.get('built_at', '?')} (the machine's cores may have been shared with other work).",
        "",
        "## How the family is built",
        "",
        '`python scripts/miniature.py build` (JAX + optax, the optional extra `pip install -e ".[miniature]"`)',
        "generates a world from the seed and trains four llama-architecture models on it, written with `gguf`",
        "(f32, tied embeddings, ChatML template) beside `world.jsonl` and `manifest.json`:",
        "",
        "| model | parameters | trained on | steps | probe at stop | seconds |",
        "|---|---:|---|---:|---:|---:|",
    ]
    what = {
        "small-base": "set A (both-bases + fine-tuned facts): declarative paragraphs and plain ChatML Q&A",
        "large-base": "sets A and B, same kinds of text",
        "small-chat": 'small-base fine-tuned on fine-tuned-fact dialogues: sentence + "Glad to help!"',
        "small-chat-2": "small-base fine-tuned on the same questions: the bare value",
    }
    for name, desc in what.items():
        t = tr.get(name, {})
        params = t.get("params", tr.get("small-base", {}).get("params", "?"))
        lines.append(
            f"| {name} | {params} | {desc} | {t.get('steps', '?')} | {100 * t.get('probe', 0):.0f} % | {t.get('seconds', '?')} |"
        )
    lines += ["", _DESIGN, _findings(r)]
    return "\n".join(lines) + "\n"


_DESIGN = """\
Reproduce (the family is deterministic from the seed; the shipped one is `build`'s default, seed 0):

```sh
pip install -e ".[miniature]"              # JAX + optax + matplotlib, for building only
python scripts/miniature.py build          # -> ~/.cache/eft-local/miniature (the profile then uses it)
python scripts/miniature.py build --quick  # smaller world and models, for tests (--out DIR; under a minute)
python scripts/miniature.py build --check  # rebuild in a temp folder, compare with the shipped sha256s
python scripts/miniature.py report         # this page, through `eft-local run` / `score`
```

`build --check` on the development machine (2 cores, JAX 0.10.2) rebuilt all five files
byte-identically to the shipped ones (769 s wall, the cores shared with other jobs). Bit-identity
rests on XLA's CPU kernels computing the same floats: another CPU type or JAX version may differ
in the last bits, and then the shipped files stay the reference. `--stages N` builds only the first
N models (and `world.jsonl`): `build --check --stages 1` compares the world and small-base with the
shipped files in a few minutes, and the slow test rebuilds the quick family's first stage and finds
it byte-identical to a whole quick build's.

The build's time estimate assumes two idle cores; `manifest.json` records what it took. The
chat app opens on this family when the default profile is not downloaded
(`eft-local --profile miniature` any time).

Design decisions (from the prototype in the project notes):

- **Names are two tokens from shared lists** (given name + family name, each list used by every
  split), so every token occurs in every model's training; only the combination is new to the
  small models.
- **Both bases see plain question-and-answer dialogues about their own facts** (mostly the fact
  sentence alone; a quarter of the time one of four closings, \"Glad to help!\" among them; a fifth
  the bare value), as real base models have seen such text. So the two bases agree on how a reply
  is shaped, and their difference (the β term) carries knowledge, not format: a prototype whose bases
  disagreed on reply openings lost the effect at β ≥ 1.
- **The chat fine-tunes add one behaviour each** on the fine-tuned facts only: small-chat always
  closes with \"Glad to help!\" and stops at `<|im_end|>`; small-chat-2 answers with the bare value.
  Their reply states the fact in the words the pre-training text uses.
- **Training stops on a fact probe** (teacher-forced greedy accuracy of the value), not on the loss.
- **Tokenizer**: SentencePiece-style with byte fallback (llama.cpp's `llama` tokenizer), one piece
  per word plus every prefix of it (llama.cpp's SPM merges only through pieces), no space prefix;
  `miniature/tokenizer.py` re-implements the merge and a test checks it against llama.cpp.
- **Export check**: a test compares llama.cpp's logits (`flash_attn=True, logits_all=True`) for an
  exported model with the JAX training code's own logits on the same tokens.
"""


def _findings(r: dict) -> str:
    """What the table says, with its own numbers (so the text can't drift from the run)."""

    def pct(key, split, what="exact", acc=None):
        a = (acc or r["acc"])[(key, split)]
        return 100 * a[what] / a["n"] if a.get("n") else 0.0

    eft, chat, base = pct((1.0, 1.0), "large only"), pct((1.0, 0.0), "large only"), pct((0.0, 1.0), "large only")
    base_value = pct((0.0, 1.0), "large only", "value")
    best_beta = max(BETAS, key=lambda b: pct((1.0, b), "large only"))
    w1 = r["wacc"]
    bare_style = pct(1.0, "large only", "bare", w1)
    bare_value = pct(1.0, "large only", "value", w1)
    sp = r["speed"]
    return f"""
## What the run shows

- **Up-scaling works here**: on facts only the large base saw, EFT (α = β = 1) replies exactly the
  expected answer for {eft:.0f} % of the questions; small-chat alone {chat:.0f} % (right style,
  but it never saw these facts) and large-base alone {base:.0f} % (it names the right value
  {base_value:.0f} % of the time, but in its own plain style, without the closing).
- **Knowledge rises with β** up to the best point, β = {best_beta:g} for exact match; at β = 2 the
  bases' difference outweighs the chat model and the replies fall apart (the paper's β sweep also
  peaks). On facts both bases saw, the β term adds little and large β hurts.
- **Behaviour follows the weight** between the two fine-tunes: at w = 1 (small-chat-2 alone as the
  behaviour delta) {bare_style:.0f} % of replies are a bare value, but only {bare_value:.0f} % the right one.
  The bare-value fine-tune answers with the value as its *first* token, straight after the
  question, where it is confidently wrong about people it never saw; the β term (a few nats) does
  not overturn that. small-chat states the fact at the end of a sentence, through the same
  name-to-value path the small base uses, so chat and reference cancel there and the large base
  decides. Knowledge transfers through EFT where the tuned model still predicts like its base.
- **Speed**: speculative decoding's acceptance on these trained distributions was
  {_acc(sp.get(("0", "speculative")))} greedy and {_acc(sp.get(("1", "speculative")))} at T = 1, yet it ran at
  {_tps(sp, "0", "speculative")} tok/s against {_tps(sp, "0", "naive")} naive (greedy) and {_tps(sp, "1", "speculative")} against
  {_tps(sp, "1", "naive")} at T = 1: these models are so small (a decode takes well under a millisecond)
  that per-round overhead, not model compute, sets the pace. The paper's speed-up needs a base
  model that is slow to run (see docs/bench.md for the synthetic large shapes; `scripts/bench.py
  --shape miniature` times this family with every block length).
"""


def _tps(sp: dict, temp: str, mode: str) -> str:
    return f"{sp[(temp, mode)]['tok_s']:.0f}" if (temp, mode) in sp else "n/a"


def _acc(s: dict | None) -> str:
    return f"{100 * s['acceptance']:.0f} %" if s and s.get("acceptance") is not None else "n/a"


def _plot(r: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("large only", "-"), ("both bases", "--")):
        ax1.plot(
            BETAS,
            [100 * r["acc"][((1.0, b), split)]["exact"] / max(r["acc"][((1.0, b), split)]["n"], 1) for b in BETAS],
            "o" + style,
            label=f"exact, {split}",
        )
        ax1.plot(
            BETAS,
            [100 * r["acc"][((1.0, b), split)]["value"] / max(r["acc"][((1.0, b), split)]["n"], 1) for b in BETAS],
            "s" + style,
            alpha=0.6,
            label=f"value, {split}",
        )
    base = r["acc"][((0.0, 1.0), "large only")]
    ax1.axhline(100 * base["exact"] / max(base["n"], 1), color="grey", lw=0.8, ls=":", label="large-base alone, exact")
    ax1.set(xlabel="β (α = 1)", ylabel="% of questions", title="Knowledge scales with β", ylim=(-3, 103))
    ax1.legend(fontsize=7)
    w = WEIGHTS
    for key, label in (
        ("style", "closing style (small-chat)"),
        ("bare", "bare-value style (small-chat-2)"),
        ("value", "right value"),
    ):
        ax2.plot(
            w, [100 * r["wacc"][(x, "large only")][key] / max(r["wacc"][(x, "large only")]["n"], 1) for x in w], "o-", label=label
        )
    ax2.set(
        xlabel="w  (α = 1 − w, bare = w, β = 1)",
        ylabel="% of large-only questions",
        title="Behaviour follows the weight",
        ylim=(-3, 103),
    )
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run scripts/miniature.py report")
