"""The report's "Learning-rate schedule" section: which runs use which schedule (from
the records), and the multiplier of every schedule used, drawn on one axis."""

from __future__ import annotations

import html as _html

from ..wording import plural
from .protocol import SCHEDULE_WORDS, phase_order, schedule_usage, seeds

esc = _html.escape

#: Line colour per schedule (constant first, grey).
_COLORS = ("#64748b", "#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed")


def figure(usage) -> bytes | None:
    """PNG: the lr multiplier of each schedule in ``usage`` over its run, for the most
    common budget of that schedule's runs (None without runs)."""
    if not usage:
        return None
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from optimlab.schedules import by_name

    fig, ax = plt.subplots(figsize=(8.0, 2.8), dpi=110)
    for i, (name, u) in enumerate(usage):
        steps = u["steps"].most_common(1)[0][0]
        try:
            fn = by_name(name, max(int(steps), 1))
        except Exception:
            continue
        t = np.arange(0, max(int(steps), 1) + 1)
        ax.plot(t / max(int(steps), 1), [fn(int(k)) for k in t], lw=2,
                color=_COLORS[i % len(_COLORS)], ls="-" if name != "constant" else "--",
                label=f"{name} ({plural(u['runs'], 'run')}"
                + (")" if name == "constant" or len(u["steps"]) > 1 else f", T = {steps})"))
    ax.set_xlabel("fraction of the run (step / T)")
    ax.set_ylabel("lr multiplier")
    ax.set_ylim(bottom=0, top=1.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _list(values) -> str:
    return esc(", ".join(str(v) for v in sorted(values)))


def html_section(ctx, images, section, img) -> str:
    """The section: one row per schedule used (what it does, its runs by phase, problems,
    optimizers, seeds), and the figure of their multipliers."""
    usage = schedule_usage(ctx["records"])
    if not usage:
        name = esc(str(ctx["meta"].get("schedule") or "constant"))
        return section("schedule", "Learning-rate schedule",
                       f"No runs stored; the comparison's schedule is {name}.", "")
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td class='l'>{esc(SCHEDULE_WORDS.get(name, name))}</td>"
        f"<td>{u['runs']}</td><td class='l'>"
        + esc(", ".join(f"{ph} {n}" for ph, n in phase_order(u["phases"])))
        + f"</td><td class='l'>{_list(u['problems'])}</td><td class='l'>"
        f"{_list(u['optimizers'])}</td><td class='l'>{seeds(u['seeds'])}</td></tr>"
        for name, u in usage)
    table = ("<table><thead><tr><th>schedule</th><th class='l'>multiplier of the base lr"
             "</th><th>runs</th><th class='l'>phase: runs</th><th class='l'>problems</th>"
             "<th class='l'>optimizers</th><th class='l'>seeds</th></tr></thead><tbody>"
             + rows + "</tbody></table>")
    if len(usage) == 1:
        cap = (f"Every run of this comparison uses base lr × the <b>{esc(usage[0][0])}</b> "
               "schedule.")
    else:
        cap = ("Each run's lr is its base lr × its schedule's multiplier. The lr search, the "
               "seeds and the other phases use the comparison's schedule; phase "
               "<i>schedules</i> reruns a few optimizers at their selected lr with the "
               "decaying schedules (claims 2 and 9). Which runs use which:")
    return section("schedule", "Learning-rate schedule", cap,
                   table + img(images, "schedule", "lr multiplier of each schedule"))
