"""The self-contained HTML page: inline CSS, PNGs as base64 data URIs, no scripts.

Every string that comes from the store (problem/optimizer names, descriptions,
commands, error messages, versions) goes through ``esc`` before it reaches the page.
"""

from __future__ import annotations

import base64
import html as _html

from . import claims, schedules
from . import protocol as P
from . import text as T
from . import viewer
from .verdicts import TAG, delta_td, mark, steps_text, tied_class, verdict_note

esc = _html.escape

CSS = """
:root{--ink:#1e293b;--mute:#64748b;--line:#e2e8f0;--bg:#f8fafc;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
 font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:linear-gradient(120deg,#1e3a8a,#2563eb);color:#fff;padding:28px 40px}
header h1{margin:0;font-size:26px;letter-spacing:.3px}
header p{margin:6px 0 0;opacity:.85}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);
 padding:8px 40px;font-size:13px;z-index:2}
nav a{color:var(--mute);text-decoration:none;margin-right:16px}
nav a:hover{color:var(--accent)}
main{max-width:1240px;margin:0 auto;padding:12px 40px 60px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;
 padding:18px 24px;margin:20px 0;box-shadow:0 1px 2px rgba(0,0,0,.03)}
h2{margin:0 0 6px;font-size:19px}
h3{font-size:15px;margin:16px 0 6px}
p.cap{color:var(--mute);margin:4px 0 12px;font-size:13.5px}
img{max-width:100%;height:auto;display:block;margin:8px auto}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right}
td:first-child{white-space:nowrap}
.nw{white-space:nowrap}
.sd{color:var(--mute);font-size:11.5px;white-space:nowrap}
th{background:#f1f5f9;font-weight:600}
td:first-child,th:first-child,td.l,th.l{text-align:left}
tr.grp td{background:#f8fafc;font-weight:600;text-align:left;border-top:2px solid var(--line);
 white-space:normal}
tbody tr:hover td{background:#f1f5f9}
tr.tied td{background:#ecfdf5}
.vd{font-weight:400;margin-left:10px;font-size:12.5px}
.tie{color:#047857;font-weight:700;margin-left:4px}
.sw{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:6px;
 vertical-align:-1px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:#fcfdff}
.card .k{font-size:12px;text-transform:uppercase;letter-spacing:.6px;color:var(--mute)}
.card .o{font-size:20px;font-weight:700;margin:2px 0}
.card .d{font-size:12.5px;color:var(--mute)}
.edge{color:#b45309;font-weight:700}
.det{color:#7c2d12;font-weight:400;font-size:12.5px}
.bad{color:#b91c1c}
.warn{background:#fef2f2;border:2px solid #b91c1c}
.note{background:#fffbeb;border:1px solid #fde68a;border-radius:8px;padding:10px 14px;
 font-size:13.5px}
pre{background:#0f172a;color:#e2e8f0;padding:12px 14px;border-radius:8px;
 overflow-x:auto;font-size:12.5px}
ul.proto li{margin:3px 0}
footer{color:var(--mute);font-size:12px;text-align:center;padding:20px}
"""


def img(images, name, alt) -> str:
    """An <img> with the PNG inlined, or '' when the figure has no data."""
    data = images.get(name)
    if not data:
        return ""
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def swatch(ctx, o) -> str:
    return f'<span class="sw" style="background:{ctx["colors"].get(o, "#999")}"></span>{esc(o)}'


def section(sid, title, cap, body) -> str:
    return (f'<section id="{sid}"><h2>{esc(title)}</h2>'
            + (f'<p class="cap">{cap}</p>' if cap else "") + body + "</section>")


def answer(ctx) -> str:
    from .verdicts import answer_html
    return answer_html(ctx)


def incomplete(ctx) -> str:
    """The warning at the top of an unfinished comparison's report ('' when finished)."""
    text = T.incomplete(ctx)
    if text is None:
        return ""
    return ('<section id="incomplete" class="warn"><h2 class="bad">⚠ Incomplete</h2>'
            f"<p>{esc(text)}</p></section>")


def stat(s, fmt="{:.4g}") -> str:
    """A <td> with the mean and, smaller, '± 95% CI half-width' (wraps when narrow)."""
    if not s:
        return "<td>—</td>"
    h = T.half_width(s)
    sd = f' <span class="sd">± {h:.2g}</span>' if h is not None else ""
    return f'<td><span class="nw">{fmt.format(s["mean"])}</span>{sd}</td>'


def gap_td(ctx, problem, s) -> str:
    """The train-gap cell: 'at the optimum' within the floor's resolution, else the stat."""
    text = T.gap_text(ctx, problem, s)
    return stat(s) if text is None else f"<td>{esc(text)}</td>"


def results_table(ctx) -> str:
    rows = []
    for p in ctx["problems"]:
        i = ctx["info"][p]
        desc = f' — <span style="font-weight:400">{esc(i["description"])}</span>' \
            if i["description"] else ""
        v = ctx["verdicts"].get(p)
        target = "" if i.get("target") is None else \
            f'<br><span class="sd">steps-to-target target: train loss ≤ {T.num(i["target"])}</span>'
        det = P.deterministic_note(ctx, p)
        det = "" if det is None else \
            f'<br><span class="det">⚙ {esc(det[0].upper() + det[1:])}</span>'
        rows.append(f'<tr class="grp"><td colspan="11">{esc(p)} '
                    f'<span style="color:var(--mute)">[{esc(i["kind"])}]</span>{desc}'
                    f'{verdict_note(v)}{target}{det}</td></tr>')
        # Best first, then the verdict's order (tied group, then the rest).
        order = (v.order if v else []) + [o for o in ctx["optimizers"]
                                           if not v or o not in v.order]
        for o in order:
            s = ctx["selections"].get((p, o))
            if s is None:
                continue
            a = ctx["aggregate"].get((p, o), {})
            sens = ctx["sensitivity"].get((p, o))
            edge = flag_html(ctx, s)
            fail = a.get("diverged", 0)
            seeds = f'{a.get("seeds", 0)}' + (f' <span class="bad">({fail} failed)</span>'
                                              if fail else "")
            t = ctx["time"].get((p, o))
            rows.append(
                f'<tr{tied_class(v, o)}><td>{swatch(ctx, o)}{mark(v, o)}</td>'
                f'<td class="nw">{T.num(s.lr)}{edge}</td>'
                f'{stat(a.get("val_loss"))}{delta_td(ctx, p, o)}{stat(a.get("test_loss"))}'
                f'{stat(a.get("test_metric"))}{gap_td(ctx, p, a.get("gap"))}'
                f'<td>{esc(steps_text(a, i.get("target") is not None))}</td><td>{seeds}</td>'
                f'<td>{"—" if sens is None else f"{sens.width:.2f}"}</td>'
                f'<td>{"—" if t is None else f"{t:.2f}×"}</td></tr>')
    head = ("<tr><th>optimizer</th><th>best lr</th><th>val loss</th>"
            "<th title='paired by seed: mean of (this − best), 95% t-interval; step-down max-t adjusted p'>"
            "Δ vs best (p)</th><th>test loss</th>"
            "<th>test metric</th><th title='final train loss − the optimum (train split, "
            "not validation)'>train gap to optimum</th><th>steps to target</th>"
            "<th>seeds</th><th>lr width (dec.)</th><th>time/step vs SGD</th></tr>")
    return section("table", "Best learning rates and final metrics",
                   "Mean ± half-width of the 95% Student-t interval over seeds at the "
                   "selected lr (failed seeds counted, not averaged); seeds = n. "
                   "<b>★</b> best, <b>≈</b> statistically indistinguishable from it "
                   f"({esc(TAG)}; shaded rows = the tied group). Δ vs best: "
                   "mean ± 95% CI of the per-seed difference to the best, with its adjusted "
                   "p; intervals of two optimizers may overlap while Δ excludes 0, since "
                   "seeds share initial weights and batches. The Δ interval is per "
                   "comparison; the adjusted p (step-down max-t over all comparisons with "
                   "the best, the choice of the best included) "
                   "decides the tied group. "
                   + flag_legend(ctx) + esc(T.TRAIN_GAP) + " It is the <i>train</i> split, "
                   "where the other loss columns are validation and test, so its order can "
                   "differ from theirs. Steps to target: over the seeds that reached it, and "
                   "how many did. " + esc(T.LR_WIDTH[0].upper() + T.LR_WIDTH[1:]),
                   f"<div style='overflow-x:auto'><table><thead>{head}</thead><tbody>"
                   + "".join(rows) + "</tbody></table></div>" + bound_note(ctx))


BOUND_FLAG = "<span class='edge'>⚑ at the search's hard bound</span>"


def flag_html(ctx, sel) -> str:
    """The flag after a selected lr: at the search's hard bound, or at a fixed grid's edge."""
    flag = T.lr_flag(ctx, sel)
    if flag == "bound":
        return (f' <span class="edge" title="at the search\'s hard bound ({esc(T.bounds(ctx))})'
                ': the search cannot widen it; the best lr may lie beyond">⚑ hard bound</span>')
    if flag == "edge":
        return (' <span class="edge" title="best lr at the end of the fixed grid: widen '
                'it (--lrs)">⚠ edge</span>')
    return ""


def flag_legend(ctx) -> str:
    """The caption's words for the lr flags the table shows ('' when it shows none)."""
    flags = {T.lr_flag(ctx, s) for s in ctx["selections"].values()}
    out = ""
    if "bound" in flags:
        out += (f"{BOUND_FLAG}: the selected lr is at the search's hard bound "
                f"({esc(T.bounds(ctx))}); the search cannot go past it, so the best lr may "
                "lie beyond (see the note below the table). ")
    if "edge" in flags:
        out += ("<span class='edge'>⚠ edge</span>: the selected lr is at the end of the "
                "lrs tried (a fixed grid, --lrs); widen it. ")
    return out


def bound_note(ctx) -> str:
    text = T.bound_note(ctx)
    return "" if text is None else f'<p class="note">⚑ {esc(text)}</p>'


def figures(ctx, images) -> str:
    out = []
    if "contours" in images:
        out.append(section("paths", "Trajectories on the 2-D problems",
                           "Each optimizer's path at its selected lr over log-spaced loss "
                           "contours; ■ start, ★ minima, dot = where it ended. Look for "
                           "zig-zag across valleys and overshoot.",
                           img(images, "contours", "trajectories")))
    out.append(viewer.section(ctx, images))  # small multiples + interactive viewer
    out.append(section("curves", "Loss curves",
                       "Train loss at the selected lr: line = mean over seeds, band = "
                       "95% t-interval of the mean. Gap to the optimum where it is known; "
                       "log y when the range "
                       "spans decades.", img(images, "loss_curves", "loss curves")
                       or "<p>No curves stored.</p>"))
    out.append(section("sensitivity", "Learning-rate sensitivity",
                       "Final val loss of the seed-0 sweep vs lr, every lr the search tried "
                       "(coarse grid, extensions past an edge, quarter-decade refinement); "
                       "× = diverged/failed, ring = selected lr (chosen on the seed mean). A "
                       "wide flat basin means the optimizer is easy to tune.",
                       img(images, "sensitivity", "lr sensitivity")))
    out.append(section("tuning", "Tuning cost", "Expected best validation loss when n of the searched lrs are tried, drawn uniformly with replacement (Dodge et al. 2019, computed exactly from the seed-0 search points; a diverged lr counts as no better than its initial loss). Low on the left = good with few tries; the search's points cluster near each optimizer's best lr, so the curves are optimistic next to blind random search.", img(images, "tuning_cost", "tuning cost") or "<p>No searched lrs.</p>"))   # noqa: E501
    ns = ctx["profile_n"]
    mr = sorted(ctx["mean_ranks"].items(), key=lambda t: t[1])
    mr_html = ("<table style='width:auto'><thead><tr><th>optimizer</th><th>mean rank</th>"
               "</tr></thead><tbody>" + "".join(
                   f"<tr><td>{swatch(ctx, o)}</td><td>{r:.2f}</td></tr>" for o, r in mr)
               + "</tbody></table>")
    out.append(section("profile", "Performance profile and ranks",
                       "Dolan &amp; Moré profile: fraction of problems on which an optimizer "
                       "is within a factor τ of the best one (higher and further left is "
                       f"better). Val-loss profile over {T.plural(ns[T.PROF_VAL], 'problem')}, steps to "
                       f"target over {T.plural(ns[T.PROF_STEPS], 'problem')}. Ranks are tie-aware: equal seed "
                       "means and the group tied with the best (boxed cells) share one "
                       "rank; — = no verdict, or no test (one seed).",
                       img(images, "profiles", "performance profile")
                       + img(images, "ranks", "rank heatmap") + mr_html))
    out.append(section("time", "Time per step relative to SGD",
                       "Median wall time of one step (forward, backward, update) divided by "
                       "SGD's on the same problem; &lt; 1 is faster.",
                       img(images, "time", "time per step")
                       or "<p>No SGD runs to compare against.</p>"))
    bias = img(images, "bias", "bias correction") or (
        '<div class="note">No bias-correction runs in this store. Produce them with '
        '<code>optimlab.lab.analysis.bias_correction_specs(problem, lrs, betas2, steps)'
        '</code> (Adam, β1 = 0.9, β2 × bias_correction ∈ {False, True} × lr, phase '
        '"bias-correction") on a "vae" kind problem and run them into this store.</div>')
    out.append(section("bias", "Adam bias correction (Kingma & Ba, Fig. 4 analogue)",
                       "Final val loss vs lr for each β2 with (solid) and without (dashed) "
                       "bias correction. Without it, large β2 makes early steps too big and "
                       "training unstable at high lr.", bias))
    out.append(schedules.html_section(ctx, images, section, img))
    return "".join(out)


def protocol(ctx) -> str:
    items = "".join(f"<li>{esc(s)}</li>" for s in T.protocol(ctx))
    return section("protocol", "Protocol", "", f'<ul class="proto">{items}</ul>')


def reproduce(ctx) -> str:
    m = ctx["meta"]
    vers = m.get("versions") or next((r.versions for r in ctx["records"] if r.versions), {})
    vrows = "".join(f"<tr><td>{esc(str(k))}</td><td class='l'>{esc(str(v))}</td></tr>"
                    for k, v in sorted(vers.items()))
    other = "".join(f"<tr><td>{esc(k)}</td><td class='l' style='white-space:normal'>"
                    f"{esc(v)}</td></tr>" for k, v in P.settings(m, _NOT_SETTINGS))
    fails = ""
    if ctx["failures"]:
        fr = "".join(f"<tr><td>{esc(r.spec.problem)}</td><td class='l'>{esc(r.spec.optimizer)}"
                     f"</td><td>{T.num(r.spec.lr)}</td><td>{r.spec.seed}</td>"
                     f"<td class='l'>{esc(r.spec.phase)}</td>"
                     f"<td class='l'>{esc(P.run_settings(r.spec))}</td>"
                     f"<td class='l'>{esc(r.status)}</td><td class='l' "
                     f"style='white-space:normal'>{esc(P.failure_reason(r))}</td></tr>"
                     for r in ctx["failures"][:200])
        more = len(ctx["failures"]) - 200
        fails = ("<h3>Failed runs</h3><table><thead><tr><th>problem</th><th class='l'>"
                 "optimizer</th><th>lr</th><th>seed</th><th class='l'>phase</th>"
                 "<th class='l'>settings (besides lr, seed)</th><th class='l'>status</th>"
                 "<th class='l'>step and reason</th></tr></thead><tbody>" + fr
                 + "</tbody></table>"
                 + (f"<p class='cap'>… and {more} more (every failed run is in the "
                    "store).</p>" if more > 0 else ""))
    return section("reproduce", "Reproduce",
                   "The exact command, the versions and the settings used (the machine, wall "
                   "time and load are in the protocol).",
                   f"<pre>{esc(T.command(m))}</pre><h3>Versions</h3><table style='width:auto'>"
                   f"{vrows}</table><h3>Run settings</h3><table style='width:auto'>{other}"
                   f"</table>{fails}")


#: Meta keys shown elsewhere, or bookkeeping rather than settings a reader needs.
_NOT_SETTINGS = ("versions", "command", "runs", "problem_info", "sources", "argv",
                 "comparison", "phase", "machine", "load", "wall_seconds", "data_sizes")


def page(ctx, images) -> str:
    """The whole report as one HTML string."""
    m = ctx["meta"]
    sub = esc(T.counts(ctx))
    if m.get("comparison"):
        sub += (f" · comparison {esc(str(m['comparison']))} "
                "(<a style='color:inherit' href='index.html'>all comparisons</a>)")
    if m.get("created"):
        sub += f" · {esc(str(m['created']))}"
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("answer", "Answer"), ("table", "Best lrs"), ("paths", "Trajectories"),
        ("multiples", "Viewer"),
        ("curves", "Curves"), ("sensitivity", "Sensitivity"), ("profile", "Profile"),
        ("time", "Time"), ("bias", "Bias correction"), ("schedule", "Schedule"),
        ("claims", "Claims"),
        ("protocol", "Protocol"), ("reproduce", "Reproduce")))
    body = (incomplete(ctx) + answer(ctx) + results_table(ctx) + figures(ctx, images)
            + claims.html_section(ctx) + protocol(ctx) + reproduce(ctx))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>optimlab report{' (incomplete)' if ctx['progress'] else ''}</title>"
            f"<style>{CSS}</style></head><body>"
            f"<header><h1>optimlab — which optimizer, at which learning rate</h1>"
            f"<p>{sub}</p></header><nav>{nav}</nav><main>{body}</main>"
            "<footer>Generated by optimlab from results.sqlite; "
            "the report never trains.</footer></body></html>")


