// The explorer's charts: a Vega-Lite spec drawn in the page by vega-embed (app/vega/),
// with Vega's compiled expressions (Streamlit's own chart element forces Vega's slower
// expression interpreter; see vega_component.py). The data comes as Arrow tables, so
// no number is written out as text on the way.
//
// data (from vega_component.py): assets (the URL folder of the Vega scripts), and when
// there is a chart: spec (without its datasets; usermeta.runs lists the runs),
// datasets (their names; each is an Arrow table under its own name, its "run" column
// the index into spec.usermeta.runs), axis_room (pixels the y axes take left of the
// plots), zoomable, and hashes: fingerprint (all of it: nothing is done while it stays
// the same), layout (all but the datasets: while it stays the same, only the datasets
// whose own hash in "hashes" changed are swapped in the drawn view, which is not built
// again). With assets alone the scripts are only fetched, so they load while the server
// still builds the charts.
//
// Events sent back (Streamlit triggers: a value for the one rerun they cause): "zoom",
// the x interval dragged across a chart ({x: [lo, hi]}), {} after a double-click on it;
// and the state "hidden", the labels of the runs hidden through the legend (data.hidden
// gives them when the chart first shows; from then on the legend does).

const SCRIPTS = ["vega.min.js", "vega-lite.min.js", "vega-embed.min.js"];
const HIDDEN = "hidden_runs";  // the spec's parameter: runs hidden through the legend

// Fetched at once, run in order (async = false), once per page; after a failure (the
// server was away) the next chart tries again.
function loadVega(assets) {
  window.__hlbdVega ??= Promise.all(SCRIPTS.map((name) => new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = assets + name;
    script.async = false;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${assets}${name}`));
    document.head.appendChild(script);
  }))).catch((error) => {
    window.__hlbdVega = null;
    throw error;
  });
  return window.__hlbdVega;
}

// One Arrow column as plain values: null where Arrow says null (never a made-up 0),
// 64-bit integers as numbers.
function values(vector) {
  const raw = vector.toArray();
  const out = ArrayBuffer.isView(raw) ? Array.from(raw, (v) => (typeof v === "bigint"
    ? Number(v) : v)) : Array.from(raw);
  if (vector.nullCount) {
    for (let i = 0; i < out.length; i++) if (!vector.isValid(i)) out[i] = null;
  }
  return out;
}

// An Arrow table as the row objects Vega reads; "run" back from its index to its label.
function rows(table, labels) {
  const names = table.schema.fields.map((f) => f.name)
    .filter((n) => !n.startsWith("__index_level_"));
  const columns = names.map((n) => values(table.getChild(n)));
  const run = names.indexOf("run");
  if (run >= 0) columns[run] = columns[run].map((i) => (i === null || i < 0 ? null : labels[i]));
  const out = new Array(table.numRows);
  for (let i = 0; i < out.length; i++) {
    const row = {};
    for (let k = 0; k < names.length; k++) row[names[k]] = columns[k][i];
    out[i] = row;
  }
  return out;
}

// The look of Streamlit's own charts, from the page's theme variables.
function themeConfig(element) {
  const css = getComputedStyle(element);
  const get = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const text = get("--st-text-color", "#31333f");
  const grid = get("--st-border-color-light", "#e6eaf1");
  const font = get("--st-font", "sans-serif");
  const label = {labelFontSize: 12, labelFontWeight: "normal", labelColor: text,
                 titleFontSize: 14, titleFontWeight: "normal", titleColor: text};
  return {
    font, background: "transparent",
    title: {color: get("--st-heading-color", text), fontSize: 16, fontWeight: 600,
            subtitleColor: text, subtitleFontSize: 13, anchor: "start", offset: 12},
    axis: {...label, ticks: false, domain: false, gridColor: grid, labelPadding: 8,
           titlePadding: 12},
    legend: {...label, labelFontSize: 14, padding: 8, rowPadding: 2},
  };
}

// vega-tooltip's own handler (it draws #vg-tooltip-element), taken once from a tiny view
// of its own: vega-embed does not export it, and the charts' handler hands it the
// tooltips it writes.
function plainTooltip() {
  window.__hlbdTooltip ??= vegaEmbed(document.createElement("div"),
                                     {mark: "point"}, {actions: false})
    .then((probe) => probe.view.tooltip());
  return window.__hlbdTooltip;
}

// A number in a tooltip: six significant digits, trailing zeros dropped.
function number(value) {
  return String(Number(Number(value).toPrecision(6)));
}

// Where the pointer of `event` is inside `group` (a scenegraph group item), in the
// coordinates its marks are drawn in.
function pointerIn(view, event, group) {
  const box = view.container().querySelector("canvas").getBoundingClientRect();
  const [originX, originY] = view.origin();
  let x = event.clientX - box.left - originX;
  let y = event.clientY - box.top - originY;
  for (let g = group; g; g = g.mark?.group) {
    x -= g.x || 0;
    y -= g.y || 0;
  }
  return [x, y];
}

// The run whose hover dot (charts.py "dots_<metric>") is nearest the pointer in y, in
// the chart the pointer is over; null when the chart draws none.
function nearestRun(view, event, item) {
  const group = item.mark.group;
  const dots = (group?.items ?? []).find((mark) => mark.name?.startsWith("dots_"));
  if (!dots?.items?.length) return null;
  const [, y] = pointerIn(view, event, group);
  let best = null;
  for (const dot of dots.items) {
    if (!best || Math.abs(dot.y - y) < Math.abs(best.y - y)) best = dot;
  }
  return best.datum.run;
}

// The hover tooltip of one x: its place as the title, then a row per run that has a
// value there (a run without one has no row, never a "null"), hidden runs left out,
// by value from the top of the chart down, the run nearest the pointer first.
function hoverTooltip(view, event, item, labels, hidden) {
  const datum = item.datum;
  const rows = [];
  // v0, v1, ...: each run's value; w0, w1, ...: its held-out (validation) value.
  labels.forEach((label, k) => {
    if (hidden.has(label)) return;
    const value = datum[`v${k}`];
    // n0, n1, ...: a group's line is the mean of this many members here.
    const members = datum[`n${k}`];
    const named = members === null || members === undefined ? label
      : `${label} (mean of ${members})`;
    if (value !== null && value !== undefined) rows.push({label: named, value, run: label});
    const held = datum[`w${k}`];
    if (held !== null && held !== undefined) {
      rows.push({label: `${label} · validation`, value: held, run: label, held: true});
    }
  });
  rows.sort((a, b) => b.value - a.value);
  const near = nearestRun(view, event, item);
  // The nearest run's own value first (its held-out one keeps its place by value).
  const at = rows.findIndex((row) => row.run === near && !row.held);
  if (at > 0) rows.unshift(...rows.splice(at, 1));
  const out = {title: datum.at};
  for (const row of rows) out[row.label] = number(row.value);
  return out;
}

// Text lines broken at spaces so that none is wider than `pixels` (about 7 px a
// character in the charts' 13 px subtitles).
function wrapLines(text, pixels) {
  const most = Math.max(20, Math.floor(pixels / 7));
  const out = [];
  for (const line of Array.isArray(text) ? text : [text]) {
    let current = "";
    for (const word of String(line).split(" ")) {
      if (current && current.length + 1 + word.length > most) {
        out.push(current);
        current = word;
      } else {
        current = current ? `${current} ${word}` : word;
      }
    }
    if (current) out.push(current);
  }
  return out;
}

function chartWidth(element, axisRoom) {
  return Math.max(120, Math.floor(element.getBoundingClientRect().width) - axisRoom);
}

// The run a click on the legend names (its symbol, its label or the entry around them),
// or null for a click anywhere else.
function legendRun(item, labels) {
  for (let it = item; it; it = it.mark?.group) {
    if (it.mark?.role?.startsWith("legend") && labels.includes(it.datum?.value)) {
      return it.datum.value;
    }
  }
  return null;
}

// box: a block as wide as the page's column; el inside it, for vega-embed; chart: what
// mount() keeps (its data, the runs hidden through the legend, what to call back).
function draw(box, el, chart) {
  const data = chart.data;
  const spec = {...data.spec, datasets: {}};
  const labels = data.spec.usermeta?.runs ?? [];
  for (const name of data.datasets) spec.datasets[name] = rows(data[name], labels);
  const width = chartWidth(box, data.axis_room);
  for (const one of spec.vconcat ?? []) {
    one.width = width;
    // A subtitle (what was not recorded, what the robust range left out) wraps at the
    // chart's width: Vega widens the whole chart to fit a long line instead.
    if (one.title?.subtitle) {
      one.title = {...one.title, subtitle: wrapLines(one.title.subtitle, width + data.axis_room)};
    }
  }
  // The runs hidden through the legend stay hidden in every drawing of the chart.
  spec.params = (spec.params ?? []).map((param) => (param.name === HIDDEN
    ? {...param, value: labels.filter((label) => chart.hidden.has(label))} : param));
  spec.config = vega.mergeConfig(themeConfig(el), spec.config ?? {});
  // As many legend columns as fit (a label is up to ~30 characters), at most the spec's.
  const legend = spec.config.legend ?? {};
  legend.columns = Math.max(1, Math.min(legend.columns ?? 4, Math.floor(width / 240)));
  spec.config.legend = legend;
  // The hover band's tooltip is written here (hoverTooltip) once the dots of the x
  // under the pointer are drawn; every other tooltip as Vega-Lite wrote it. A newer
  // call (a move, a leave) wins over one still waiting. Given to vega-embed, which sets
  // it before the first drawing (set on a drawn view, a handler starts a new, blank
  // renderer: everything would be drawn twice).
  let view = null;
  let latest = 0;
  const tooltip = (plain) => (handler, event, item, value) => {
    const call = ++latest;
    if (!view || value == null || !item?.mark?.name?.startsWith("hover_")) {
      plain(handler, event, item, value);
      return;
    }
    view.runAsync().then(() => {
      if (call === latest) {
        plain(handler, event, item, hoverTooltip(view, event, item, labels, chart.hidden));
      }
    });
  };
  // Canvas draws thousands of points faster than SVG. No "..." menu: it saved all the
  // charts in one transparent image named "visualization"; the buttons of
  // exportButtons save one chart each.
  return plainTooltip().then((plain) => vegaEmbed(el, spec, {
    actions: false, renderer: "canvas", tooltip: tooltip(plain)})).then((result) => {
    view = result.view;
    el.hlbdView = view;  // for tests and the browser's console
    // A click on a legend entry hides its run (every mark of it), again shows it.
    view.addEventListener("click", (event, item) => {
      const run = legendRun(item, labels);
      if (run === null) return;
      if (!chart.hidden.delete(run)) chart.hidden.add(run);
      const hidden = labels.filter((label) => chart.hidden.has(label));
      view.signal(HIDDEN, hidden).runAsync();
      chart.said("hidden", hidden);
    });
    if (!data.zoomable) return {result, width};
    // The interval follows the pointer while it drags; it is sent once, when the
    // button is let go (anywhere on the page).
    let dragged = null;
    view.addSignalListener("zoom", (_, value) => {
      const x = value?.x;
      dragged = x && x.length === 2 && x[0] !== x[1] ? value : null;
    });
    const release = () => {
      if (dragged) chart.zoomed(dragged);
      dragged = null;
    };
    window.addEventListener("pointerup", release);
    return {result, width, release};
  });
}

// The colour the page is drawn on (the charts themselves are transparent).
function pageBackground(element) {
  for (let e = element; e; e = e.parentElement) {
    const color = getComputedStyle(e).backgroundColor;
    if (color && color !== "transparent" && !/rgba\(.*, 0\)$/.test(color)) return color;
  }
  return "white";
}

// A file name from the metric and the runs' names: "Loss - first, second.png".
function exportName(title, labels, hidden) {
  const names = [...new Set(labels.filter((label) => !hidden.has(label))
    .map((label) => label.split(" · ")[0]))];
  const runs = names.length > 4
    ? `${names.slice(0, 3).join(", ")} and ${names.length - 3} more` : names.join(", ");
  return `${title} - ${runs}`.replace(/[\\/:*?"<>|\x00-\x1f]+/g, "_").slice(0, 180) + ".png";
}

// One chart of the stack as a PNG, at twice the screen's pixels: the legend above it,
// on the page's background (a transparent image is unreadable in a dark viewer).
async function exportChart(view, index, title, labels, hidden, background) {
  const scale = 2;
  const whole = await view.toCanvas(scale);
  const [originX, originY] = view.origin();
  const root = view.scenegraph().root.items[0];
  // Each part with a margin: Vega's bounds run close to the text of the axis titles.
  const margin = 6;
  const part = (test) => {
    const b = root.items.find(test)?.items?.[0]?.bounds;
    return b && {x1: Math.max(b.x1 - margin, -originX), y1: Math.max(b.y1 - margin, -originY),
                 x2: b.x2 + margin, y2: b.y2 + margin};
  };
  const parts = [part((mark) => mark.role === "legend"),
                 part((mark) => mark.name === `concat_${index}_group`)].filter(Boolean);
  const pad = 6;
  const width = Math.max(...parts.map((b) => b.x2 - b.x1)) + 2 * pad;
  const height = parts.reduce((sum, b) => sum + b.y2 - b.y1, 0) + pad * (parts.length + 1);
  const out = document.createElement("canvas");
  out.width = Math.ceil(width * scale);
  out.height = Math.ceil(height * scale);
  const context = out.getContext("2d");
  context.fillStyle = background;
  context.fillRect(0, 0, out.width, out.height);
  let y = pad;
  for (const b of parts) {
    const [w, h] = [b.x2 - b.x1, b.y2 - b.y1];
    context.drawImage(whole, (b.x1 + originX) * scale, (b.y1 + originY) * scale, w * scale,
                      h * scale, pad * scale, y * scale, w * scale, h * scale);
    y += h + pad;
  }
  const link = document.createElement("a");
  link.download = exportName(title, labels, hidden);
  link.href = out.toDataURL("image/png");
  link.click();
}

// "Save as PNG" and a button per chart, above the charts.
function exportButtons(bar, chart) {
  const titles = (chart.data.spec.vconcat ?? []).map((one) => one.title?.text ?? "chart");
  const labels = chart.data.spec.usermeta?.runs ?? [];
  bar.replaceChildren();
  if (!titles.length) return;
  const caption = document.createElement("span");
  caption.textContent = "Save as PNG:";
  bar.appendChild(caption);
  titles.forEach((title, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.style.cssText = "font:inherit;color:inherit;background:transparent;" +
      "border:1px solid var(--st-border-color, currentColor);border-radius:0.5rem;" +
      "padding:1px 8px;cursor:pointer";
    button.textContent = title;
    button.title = `Save the ${title} chart as a PNG image`;
    button.addEventListener("click", () => {
      const view = chart.drawn?.result.view;
      if (view) {
        exportChart(view, index, title, labels, chart.hidden, pageBackground(bar));
      }
    });
    bar.appendChild(button);
  });
}

// A pointer that was resting over the old drawing rests over the new one: the same
// move, handed to the new canvas, brings its hover rule, dots and tooltip back.
function hoverAgain(el, pointer) {
  const canvas = el.querySelector("canvas");
  if (!pointer || !canvas) return;
  canvas.dispatchEvent(new PointerEvent("pointermove", {
    clientX: pointer.clientX, clientY: pointer.clientY, bubbles: true,
    pointerType: "mouse", isPrimary: true}));
}

// One chart per element Streamlit gives it. Streamlit calls the default export again
// with the same parentElement whenever the data changes (and the cleanup it returns
// only when the element goes), so the chart lives on the element and is redrawn.
function mount(parentElement) {
  const box = document.createElement("div");
  const bar = document.createElement("div");
  bar.className = "hlbd-export";
  bar.style.cssText = "display:flex;flex-wrap:wrap;gap:6px;align-items:center;" +
    "justify-content:flex-end;font-size:0.8rem;margin-bottom:4px";
  const el = document.createElement("div");
  box.append(bar, el);
  parentElement.appendChild(box);
  // hidden: the labels of the runs hidden through the legend, from the page's link
  // when the chart first shows, then as the legend says (the page is told, for its link).
  const chart = {data: null, hidden: null, trigger: null, setState: null, drawn: null,
                 pending: false, generation: 0};
  chart.zoomed = (value) => chart.trigger("zoom", value);
  chart.said = (name, value) => chart.data?.zoomable && chart.setState?.(name, value);
  // A double-click on a chart goes back to the whole x range.
  box.addEventListener("dblclick", () => chart.data?.zoomable && chart.zoomed({}));
  // Where the pointer rests over the charts, so that a new drawing (a live update)
  // shows the hover rule and tooltip again without waiting for the pointer to move.
  chart.pointer = null;
  box.addEventListener("pointermove", (event) => {
    if (event.isTrusted) chart.pointer = {clientX: event.clientX, clientY: event.clientY};
  });
  box.addEventListener("pointerleave", () => {
    chart.pointer = null;
  });
  const discard = (drawn) => {
    window.removeEventListener("pointerup", drawn.release);
    drawn.result.finalize();
  };
  const drop = () => {
    if (chart.drawn) discard(chart.drawn);
    chart.drawn = null;
  };
  // How many times the chart was drawn, with new data or anew (for tests and benches:
  // the element's data-drawings).
  let drawings = 0;
  const drawnAgain = () => {
    el.dataset.drawings = String(++drawings);
  };
  // A newer redraw (new data, a new width) wins over one still in flight.
  chart.redraw = (loading) => {
    const generation = ++chart.generation;
    chart.pending = true;
    return loading.then(() => {
      if (generation !== chart.generation) return null;
      // The page keeps its height while the chart is drawn again (nothing below jumps).
      box.style.minHeight = `${box.offsetHeight}px`;
      drop();
      el.replaceChildren();
      const data = chart.data;
      return draw(box, el, chart).then((drawn) => {
        if (generation !== chart.generation) {
          discard(drawn);
        } else {
          chart.drawn = {...drawn, layout: data.layout, hashes: {...data.hashes}};
          chart.pending = false;
          box.style.minHeight = "";
          exportButtons(bar, chart);
          hoverAgain(el, chart.pointer);
          drawnAgain();
        }
      });
    }).catch((error) => {
      box.style.minHeight = "";
      if (generation === chart.generation) {
        chart.pending = false;
        el.textContent = `The charts could not be drawn: ${error.message}`;
      }
    });
  };
  // The same chart with other numbers (a smoothing, a zoom that keeps the axes): the
  // changed datasets go into the drawn view, which runs again; no new view is built.
  chart.swap = (names) => {
    const generation = ++chart.generation;
    const view = chart.drawn.result.view;
    const labels = chart.data.spec.usermeta?.runs ?? [];
    for (const name of names) view.data(name, rows(chart.data[name], labels));
    chart.drawn.hashes = {...chart.data.hashes};
    return view.runAsync().then(() => {
      if (generation === chart.generation) {
        hoverAgain(el, chart.pointer);
        drawnAgain();
      }
    }).catch((error) => {
      if (generation === chart.generation) {
        el.textContent = `The charts could not be drawn: ${error.message}`;
      }
    });
  };
  // The plots take the page's width: drawn again when it changes (the sidebar opens).
  let resizing = null;
  const observer = new ResizeObserver(() => {
    const drawn = chart.drawn;
    if (!drawn || Math.abs(chartWidth(box, chart.data.axis_room) - drawn.width) < 2) return;
    clearTimeout(resizing);
    resizing = setTimeout(() => chart.redraw(loadVega(chart.data.assets)), 150);
  });
  observer.observe(box);
  chart.close = () => {
    chart.generation++;
    observer.disconnect();
    clearTimeout(resizing);
    drop();
    box.remove();
    delete parentElement.__hlbdChart;
  };
  return chart;
}

export default function ({data, parentElement, setTriggerValue, setStateValue}) {
  const loading = loadVega(data.assets);
  if (!data.spec) return undefined;
  parentElement.__hlbdChart ??= mount(parentElement);
  const chart = parentElement.__hlbdChart;
  chart.trigger = setTriggerValue;
  chart.setState = setStateValue;
  chart.hidden ??= new Set(data.hidden ?? []);
  if (chart.data?.fingerprint !== data.fingerprint) {
    chart.data = data;
    const drawn = chart.drawn;
    if (drawn && !chart.pending && drawn.layout === data.layout) {
      chart.swap(data.datasets.filter((name) => drawn.hashes[name] !== data.hashes[name]));
    } else {
      chart.redraw(loading);
    }
  }
  return chart.close;
}
