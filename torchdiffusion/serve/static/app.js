// The page of `torchdiffusion serve`: calls the server's own A1111 API; no external scripts.
"use strict";
const $ = (id) => document.getElementById(id);
const api = (path, options) => fetch(path, Object.assign({ credentials: "same-origin" }, options));

async function errorText(response) {
  try {
    const body = await response.json();
    return body.detail || body.error || response.statusText;
  } catch (e) {
    return response.statusText;
  }
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function init() {
  const [samplers, models] = await Promise.all([api("sdapi/v1/samplers"), api("sdapi/v1/sd-models")]);
  if (samplers.ok) {
    for (const s of await samplers.json()) {
      const option = document.createElement("option");
      option.value = option.textContent = s.name;
      $("sampler_name").appendChild(option);
    }
  }
  if (models.ok) {
    const list = await models.json();
    if (list.length) $("model").textContent = list[0].model_name;
  }
}

function numberOrNull(id) {
  const value = $(id).value;
  return value === "" ? null : Number(value);
}

function addToGallery(images, info) {
  const details = JSON.parse(info);
  images.forEach((b64, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + b64;
    img.alt = details.prompt;
    const caption = document.createElement("figcaption");
    caption.textContent = details.infotexts[i] || "";
    figure.append(img, caption);
    $("gallery").prepend(figure);
  });
}

async function pollProgress(taskId, stop) {
  while (!stop.done) {
    try {
      const response = await api("sdapi/v1/progress?id_task=" + encodeURIComponent(taskId));
      if (response.ok) {
        const p = await response.json();
        if (stop.done) break; // the job ended while this poll was in flight: its figures are stale
        $("progress").value = p.progress;
        if (p.current_image) {
          $("preview").src = "data:image/png;base64," + p.current_image;
          $("preview").hidden = false;
        }
        if (p.state.queue_position > 0) setStatus("waiting in the queue (place " + p.state.queue_position + ")");
        else if (p.state.sampling_steps) setStatus("step " + p.state.sampling_step + " / " + p.state.sampling_steps);
      }
    } catch (e) { /* the next poll tries again */ }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

async function generate(event) {
  event.preventDefault();
  const taskId = "page-" + Date.now() + "-" + Math.random().toString(16).slice(2);
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    steps: numberOrNull("steps"),
    cfg_scale: numberOrNull("cfg_scale"),
    seed: numberOrNull("seed"),
    sampler_name: $("sampler_name").value || null,
    width: numberOrNull("width"),
    height: numberOrNull("height"),
    force_task_id: taskId,
  };
  for (const key of Object.keys(body)) if (body[key] === null) delete body[key];
  $("generate").disabled = true;
  $("interrupt").disabled = false;
  $("progress").value = 0;
  setStatus("starting");
  const stop = { done: false };
  pollProgress(taskId, stop);
  try {
    const response = await api("sdapi/v1/txt2img", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      setStatus(response.status + ": " + (await errorText(response)), true);
      return;
    }
    const result = await response.json();
    addToGallery(result.images, result.info);
    $("progress").value = 1;
    setStatus("done: seed " + JSON.parse(result.info).seed);
  } catch (e) {
    setStatus("request failed: " + e, true);
  } finally {
    stop.done = true;
    $("preview").hidden = true;
    $("generate").disabled = false;
    $("interrupt").disabled = true;
  }
}

$("form").addEventListener("submit", generate);
$("interrupt").addEventListener("click", () => api("sdapi/v1/interrupt", { method: "POST" }));
init();
