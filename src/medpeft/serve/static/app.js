// medpeft web page: list the tasks, upload one image per modality, show the probabilities as bars.
"use strict";

const IMAGE_TYPES = ".png,.jpg,.jpeg,.bmp,.tif,.tiff,.dcm,.dicom,.nii,.nii.gz,.npy";
const el = (id) => document.getElementById(id);
let tasks = [];
let shownTask = null; // the task whose file fields are on the page

function authHeaders() {
  const token = el("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function showError(message) {
  el("error").textContent = message;
  el("error").hidden = !message;
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadTasks() {
  const response = await fetch("tasks", { headers: authHeaders() });
  if (response.status === 401) {
    el("auth").open = true;
    showError("This server needs an access token: enter it below.");
    return;
  }
  if (!response.ok) {
    showError(await detailOf(response));
    return;
  }
  showError("");
  tasks = (await response.json()).tasks;
  const select = el("task");
  const chosen = select.value;
  select.replaceChildren(...tasks.map((task) => new Option(`${task.name} (${task.method}, ${task.labels.length} labels)`, task.name)));
  if (tasks.some((task) => task.name === chosen)) select.value = chosen; // a reload keeps the choice
  if (select.value !== shownTask) renderModalities();
}

function renderModalities() {
  const task = tasks.find((t) => t.name === el("task").value);
  shownTask = task ? task.name : null;
  const fields = el("modalities");
  fields.querySelectorAll(".modality").forEach((node) => node.remove());
  if (!task) return;
  for (const modality of task.modalities) {
    const row = document.createElement("div");
    row.className = "modality";
    const label = document.createElement("label");
    label.textContent = modality;
    label.htmlFor = `file-${modality}`;
    const input = document.createElement("input");
    input.type = "file";
    input.id = `file-${modality}`;
    input.name = modality;
    input.accept = IMAGE_TYPES;
    row.append(label, input);
    fields.append(row);
  }
  const several = task.modalities.length > 1 ? "; leave a modality empty if it is missing" : "";
  el("task-info").textContent = `${task.task}: ${task.labels.join(", ")}${several}`;
  el("result").hidden = true;
}

function renderBars(result) {
  const top = new Set(result.prediction.split("|"));
  const bars = result.labels.map((name) => {
    const p = result.probabilities[name];
    const item = document.createElement("li");
    item.className = top.has(name) ? "bar top" : "bar";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    label.title = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    item.append(label, track, value);
    return item;
  });
  el("bars").replaceChildren(...bars);
  el("result-task").textContent = result.task;
  el("prediction").textContent = result.prediction ? `prediction: ${result.prediction}` : "no label above 50%";
  el("missing").textContent = result.missing.length ? `missing: ${result.missing.join(", ")}` : "";
  el("result").hidden = false;
}

async function predict(event) {
  event.preventDefault();
  showError("");
  const form = new FormData();
  form.append("task", el("task").value);
  for (const input of el("modalities").querySelectorAll("input[type=file]")) {
    if (input.files.length) form.append(input.name, input.files[0], input.files[0].name);
  }
  const button = el("predict");
  button.disabled = true;
  try {
    const response = await fetch("predict", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      showError(await detailOf(response));
      return;
    }
    renderBars(await response.json());
  } catch (error) {
    showError(`request failed: ${error}`);
  } finally {
    button.disabled = false;
  }
}

el("token").value = sessionStorage.getItem("medpeft-token") || "";
el("token").addEventListener("change", () => {
  sessionStorage.setItem("medpeft-token", el("token").value.trim());
  loadTasks();
});
el("task").addEventListener("change", renderModalities);
el("predict-form").addEventListener("submit", predict);
loadTasks();
