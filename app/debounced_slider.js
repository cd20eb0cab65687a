// A slider that tells the app its value once the hand stops: while an arrow key is
// held (or tapped again and again) the value shows at once, and only the last one is
// sent, WAIT_MS after the last change; a drag is sent when the pointer is let go. Each
// value Streamlit's own slider sends reruns the app (its keyboard sends every step), so
// holding a key queued a rerun per step.
//
// data (from debounced_slider.py): label, help, min, max, step, value (the app's).
// State sent back: "value".

const WAIT_MS = 350;

function decimals(step) {
  const text = String(step);
  return text.includes(".") ? text.split(".")[1].length : 0;
}

function mount(parentElement) {
  const box = document.createElement("div");
  box.className = "hlbd-slider";
  box.style.cssText = "display:flex;flex-direction:column;gap:0.25rem;" +
    "font-family:var(--st-font, sans-serif);color:var(--st-text-color, inherit)";
  const head = document.createElement("label");
  head.style.cssText = "display:flex;justify-content:space-between;gap:0.5rem;" +
    "font-size:0.875rem;line-height:1.6";
  const name = document.createElement("span");
  const shown = document.createElement("span");
  shown.style.cssText = "font-variant-numeric:tabular-nums;" +
    "color:var(--st-primary-color, currentColor)";
  head.append(name, shown);
  const input = document.createElement("input");
  input.type = "range";
  input.style.cssText = "width:100%;margin:0.25rem 0;" +
    "accent-color:var(--st-primary-color, #ff4b4b);cursor:pointer";
  head.htmlFor = input.id = `hlbd-slider-${Math.random().toString(36).slice(2)}`;
  box.append(head, input);
  parentElement.appendChild(box);
  const slider = {box, name, shown, input, timer: null, pending: false, dragging: false,
                  data: null, setState: null};
  const show = () => {
    shown.textContent = Number(input.value).toFixed(decimals(slider.data.step));
  };
  const send = () => {
    clearTimeout(slider.timer);
    slider.timer = null;
    if (!slider.pending) return;
    slider.pending = false;
    slider.setState?.("value", Number(input.value));
  };
  input.addEventListener("input", () => {
    slider.pending = true;
    show();
    clearTimeout(slider.timer);
    if (!slider.dragging) slider.timer = setTimeout(send, WAIT_MS);
  });
  input.addEventListener("pointerdown", () => {
    slider.dragging = true;
  });
  const release = () => {
    if (!slider.dragging) return;
    slider.dragging = false;
    send();
  };
  window.addEventListener("pointerup", release);
  slider.show = show;
  slider.close = () => {
    clearTimeout(slider.timer);
    window.removeEventListener("pointerup", release);
    box.remove();
    delete parentElement.__hlbdSlider;
  };
  return slider;
}

export default function ({data, parentElement, setStateValue}) {
  parentElement.__hlbdSlider ??= mount(parentElement);
  const slider = parentElement.__hlbdSlider;
  slider.setState = setStateValue;
  slider.data = data;
  slider.name.textContent = data.label;
  slider.box.title = data.help ?? "";
  slider.input.setAttribute("aria-label", data.label);
  Object.assign(slider.input, {min: data.min, max: data.max, step: data.step});
  // The app's value shows unless the hand is still on the slider.
  if (!slider.pending && !slider.dragging) slider.input.value = String(data.value);
  slider.show();
  return slider.close;
}
