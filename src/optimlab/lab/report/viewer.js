/* optimlab trajectory viewer: the selected runs' paths replayed over the loss contours.
   Data: the JSON in #olv-data (written by optimlab/lab/report/viewer.py). Names reach the
   page through textContent only; nothing is fetched, so it works offline from file://. */
(function () {
  "use strict";
  var root = document.getElementById("olv");
  var src = document.getElementById("olv-data");
  if (!root || !src) return;
  var D = JSON.parse(src.textContent);
  var cv = document.getElementById("olv-canvas");
  var g = cv.getContext("2d");
  var pick = document.getElementById("olv-problem");
  var play = document.getElementById("olv-play");
  var slider = document.getElementById("olv-step");
  var label = document.getElementById("olv-label");
  var list = document.getElementById("olv-opts");
  var M = D.margin, W = D.width, H = D.height;
  var PW = W - M.l - M.r, PH = H - M.t - M.b;
  var PLAY_MS = 6000;              // a whole run plays in 6 s, whatever its length
  var cur = 0, images = [], shown = {}, values = {}, boxes = {};
  var anim = null, last = 0, acc = 0;

  // Sharp on high-density screens: a bigger backing store, drawn in CSS pixels.
  var dpr = window.devicePixelRatio || 1;
  cv.width = Math.round(W * dpr);
  cv.height = Math.round(H * dpr);
  cv.style.width = W + "px";
  g.setTransform(dpr, 0, 0, dpr, 0, 0);

  function el(tag, cls) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    return e;
  }
  function sx(P, x) {
    return M.l + (x - P.bounds[0][0]) / (P.bounds[0][1] - P.bounds[0][0]) * PW;
  }
  function sy(P, y) {
    return M.t + (P.bounds[1][1] - y) / (P.bounds[1][1] - P.bounds[1][0]) * PH;
  }
  function ticks(lo, hi, n) {
    var raw = (hi - lo) / n, step = Math.pow(10, Math.floor(Math.log10(raw)));
    var r = raw / step;
    step *= r >= 7.5 ? 10 : r >= 3.5 ? 5 : r >= 1.5 ? 2 : 1;
    var out = [];
    for (var v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return out;
  }
  function num(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    var a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : String(+v.toPrecision(3));
  }

  // Where optimizer O is at step k: the kept points up to k, then a straight line to
  // a point interpolated between the kept points around k (the simplification only
  // dropped points lying on such lines). ended: the path stops before step k.
  function head(O, k) {
    var lo = 0, hi = O.i.length - 1;
    if (k >= O.i[hi]) return {j: hi, x: O.x[hi], y: O.y[hi], ended: k > O.i[hi]};
    while (hi - lo > 1) {
      var mid = (lo + hi) >> 1;
      if (O.i[mid] <= k) lo = mid; else hi = mid;
    }
    var t = (k - O.i[lo]) / (O.i[hi] - O.i[lo]);
    return {j: lo, x: O.x[lo] + t * (O.x[hi] - O.x[lo]),
            y: O.y[lo] + t * (O.y[hi] - O.y[lo]), ended: false};
  }

  // The loss shown for step k: only ever a stored one, named by its step when the path
  // has no point at k itself (the simplification dropped it, or the path ended).
  function value(O, h, k) {
    var end = O.i[O.i.length - 1];
    if (h.ended) return (O.status !== "ok" ? O.status : "ended") + " at step " + end;
    var at = O.i[h.j];
    return at === k ? num(O.f[h.j]) : num(O.f[h.j]) + " (step " + at + ")";
  }

  function star(x, y) {
    g.beginPath();
    for (var n = 0; n < 10; n++) {
      var r = n % 2 ? 3.4 : 8, a = -Math.PI / 2 + n * Math.PI / 5;
      g.lineTo(x + r * Math.cos(a), y + r * Math.sin(a));
    }
    g.closePath();
    g.fillStyle = "#facc15";
    g.fill();
    g.strokeStyle = "#111";
    g.lineWidth = 0.8;
    g.stroke();
  }

  function axes(P) {
    g.strokeStyle = "#94a3b8";
    g.lineWidth = 1;
    g.strokeRect(M.l + 0.5, M.t + 0.5, PW - 1, PH - 1);
    g.fillStyle = "#475569";
    g.font = "11px system-ui, sans-serif";
    g.textAlign = "center";
    g.textBaseline = "top";
    ticks(P.bounds[0][0], P.bounds[0][1], 6).forEach(function (v) {
      var x = sx(P, v);
      g.fillRect(x, M.t + PH, 1, 4);
      g.fillText(String(+v.toPrecision(4)), x, M.t + PH + 6);
    });
    g.fillText("x", M.l + PW / 2, M.t + PH + 21);
    g.textAlign = "right";
    g.textBaseline = "middle";
    ticks(P.bounds[1][0], P.bounds[1][1], 5).forEach(function (v) {
      var y = sy(P, v);
      g.fillRect(M.l - 4, y, 4, 1);
      g.fillText(String(+v.toPrecision(4)), M.l - 6, y);
    });
    g.fillText("y", 12, M.t + PH / 2);
  }

  function draw() {
    var P = D.problems[cur], k = +slider.value;
    g.fillStyle = "#fff";
    g.fillRect(0, 0, W, H);
    var im = images[cur];
    if (im && im.complete && im.naturalWidth) g.drawImage(im, M.l, M.t, PW, PH);
    axes(P);
    g.save();
    g.beginPath();
    g.rect(M.l, M.t, PW, PH);
    g.clip();
    P.minima.forEach(function (m) { star(sx(P, m[0]), sy(P, m[1])); });
    var O0 = P.opts[0];
    g.fillStyle = "#000";
    g.fillRect(sx(P, O0.x[0]) - 5, sy(P, O0.y[0]) - 5, 10, 10);
    P.opts.forEach(function (O) {
      var h = head(O, k), failed = h.ended && O.status !== "ok";
      if (shown[O.name]) {
        g.strokeStyle = O.color;
        g.lineJoin = "round";
        if (!h.ended && h.j < O.i.length - 1) {   // the road ahead, faint
          g.globalAlpha = 0.45;
          g.lineWidth = 1;
          g.setLineDash([4, 3]);
          g.beginPath();
          g.moveTo(sx(P, h.x), sy(P, h.y));
          for (var q = h.j + 1; q < O.i.length; q++) g.lineTo(sx(P, O.x[q]), sy(P, O.y[q]));
          g.stroke();
          g.setLineDash([]);
          g.globalAlpha = 1;
        }
        g.lineWidth = 1.8;
        g.beginPath();
        g.moveTo(sx(P, O.x[0]), sy(P, O.y[0]));
        for (var j = 1; j <= h.j; j++) g.lineTo(sx(P, O.x[j]), sy(P, O.y[j]));
        g.lineTo(sx(P, h.x), sy(P, h.y));
        g.stroke();
        var hx = sx(P, h.x), hy = sy(P, h.y);
        g.beginPath();
        g.arc(hx, hy, 4.5, 0, 2 * Math.PI);
        g.fillStyle = failed ? "#b91c1c" : O.color;
        g.fill();
        g.strokeStyle = "#fff";
        g.lineWidth = 1.2;
        g.stroke();
      }
      values[O.name].textContent = value(O, h, k);
    });
    g.restore();
    label.textContent = "step " + k + " / " + P.steps;
  }

  function stop() {
    if (anim !== null) cancelAnimationFrame(anim);
    anim = null;
    play.textContent = "▶ play";
    play.setAttribute("aria-label", "play");
  }
  function frame(t) {
    var P = D.problems[cur];
    if (!last) last = t;
    acc = Math.min(P.steps, acc + (t - last) * P.steps / PLAY_MS);
    last = t;
    slider.value = Math.floor(acc);
    draw();
    if (acc >= P.steps) stop(); else anim = requestAnimationFrame(frame);
  }
  function start() {
    if (+slider.value >= +slider.max) slider.value = 0;
    acc = +slider.value;
    last = 0;
    play.textContent = "❚❚ pause";
    play.setAttribute("aria-label", "pause");
    anim = requestAnimationFrame(frame);
  }

  function setup(n) {
    stop();
    cur = n;
    var P = D.problems[n];
    slider.max = P.steps;
    slider.value = P.steps;
    list.textContent = "";
    values = {};
    boxes = {};
    var bar = el("div", "all");
    [["all", true], ["none", false]].forEach(function (b) {
      var btn = el("button");
      btn.type = "button";
      btn.textContent = b[0];
      btn.addEventListener("click", function () {
        P.opts.forEach(function (O) { shown[O.name] = b[1]; boxes[O.name].checked = b[1]; });
        draw();
      });
      bar.appendChild(btn);
    });
    list.appendChild(bar);
    P.opts.forEach(function (O) {
      if (!(O.name in shown)) shown[O.name] = true;
      var lab = el("label"), cb = el("input"), sw = el("span", "sw"), nm = el("span");
      var v = el("span", "v");
      cb.type = "checkbox";
      cb.checked = shown[O.name];
      cb.value = O.name;
      cb.addEventListener("change", function () { shown[O.name] = cb.checked; draw(); });
      sw.style.background = O.color;
      nm.textContent = O.name + " (lr " + num(O.lr) + ")";
      lab.appendChild(cb);
      lab.appendChild(sw);
      lab.appendChild(nm);
      lab.appendChild(v);
      list.appendChild(lab);
      values[O.name] = v;
      boxes[O.name] = cb;
    });
    draw();
    var im = images[n];
    if (!im || im.complete) root.dataset.ready = "1";
  }

  D.problems.forEach(function (P, n) {
    var o = el("option");
    o.value = String(n);
    o.textContent = P.name;
    pick.appendChild(o);
    if (P.image) {
      var im = new Image();
      im.onload = function () {
        if (cur === n) { draw(); root.dataset.ready = "1"; }
      };
      im.src = P.image;
      images[n] = im;
    }
  });
  play.addEventListener("click", function () { if (anim !== null) stop(); else start(); });
  slider.addEventListener("input", function () { acc = +slider.value; draw(); });
  pick.addEventListener("change", function () {
    root.dataset.ready = "";
    setup(+pick.value);
  });
  if (D.problems.length) setup(0);
}());
