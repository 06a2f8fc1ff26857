// The viewer page: the reference series with the mask overlaid (NiiVue, WebGL2), in the BraTS colours of
// the preview PNG. Both volumes come from the result store on one lattice, so the overlay is exact.
// When everything is loaded and drawn, <html data-viewer-ready="true"> is set and window.tumorsegViewer
// holds what the page shows (for tests and for the curious).
"use strict";

// BraTS label → [abbreviation, RGB]: the colours of labels.py's LABEL_STYLE (preview and DICOM SEG).
const LABELS = {
  1: ["NCR", [255, 0, 0]],
  2: ["ED", [0, 255, 0]],
  4: ["ET", [255, 255, 0]],
};
const REGIONS = [["wt", "whole tumour (WT)"], ["tc", "tumour core (TC)"], ["et", "enhancing tumour (ET)"]];

function resultId() {
  const match = window.location.pathname.match(/^\/results\/([0-9a-f]{32})\/viewer\/?$/);
  if (!match) throw new Error("not a viewer URL");
  return match[1];
}

// NiiVue's label colour map for the labels switched on (alpha 0 hides a label).
function labelColormap(visible) {
  const cm = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  for (let index = 0; index <= 4; index++) {
    const style = LABELS[index];
    const [r, g, b] = style ? style[1] : [0, 0, 0];
    cm.R.push(r); cm.G.push(g); cm.B.push(b);
    cm.A.push(style && visible.has(index) ? 255 : 0);
    cm.I.push(index);
    cm.labels.push(style ? style[0] : "");
  }
  return cm;
}

// Voxel counts per label and the tumour's centre of mass (file voxel order i, j, k), from the mask data.
function maskStatistics(volume) {
  const [, nx, ny] = volume.hdr.dims;
  const counts = { 1: 0, 2: 0, 4: 0 };
  let sum = [0, 0, 0], n = 0;
  const data = volume.img;
  for (let index = 0; index < data.length; index++) {
    const label = data[index];
    if (label === 0) continue;
    counts[label] = (counts[label] || 0) + 1;
    const i = index % nx, j = Math.floor(index / nx) % ny, k = Math.floor(index / (nx * ny));
    sum[0] += i; sum[1] += j; sum[2] += k; n++;
  }
  const centre = n ? sum.map((s) => Math.round(s / n)) : volume.hdr.dims.slice(1, 4).map((d) => Math.floor(d / 2));
  return { counts, centre };
}

// NiiVue's fraction of the crosshair for file voxel (i, j, k). The 2D views show the voxel grid turned to
// the closest RAS axes (permRAS: which file axis each RAS axis is, negative when flipped), not world
// planes, so the position goes through that grid (mm2frac would use world space: off for oblique series).
function voxelToFrac(nv, volume, fileVoxel) {
  const dims = volume.hdr.dims.slice(1, 4);
  const ras = volume.permRAS.map((p) => {
    const axis = Math.abs(p) - 1;
    return p < 0 ? dims[axis] - 1 - fileVoxel[axis] : fileVoxel[axis];
  });
  return nv.vox2frac(ras); // volume 0, the reference: the same lattice
}

// The file voxel (i, j, k) under the crosshair: voxelToFrac's inverse.
function crosshairVoxel(nv, volume) {
  const dims = volume.hdr.dims.slice(1, 4);
  const ras = Array.from(nv.frac2vox(nv.scene.crosshairPos));
  const file = [0, 0, 0];
  volume.permRAS.forEach((p, r) => {
    const axis = Math.abs(p) - 1;
    file[axis] = p < 0 ? dims[axis] - 1 - ras[r] : ras[r];
  });
  return file;
}

function fillTables(result) {
  const { element, row } = tumorseg;
  const summary = document.getElementById("summary");
  summary.append(
    row(element("th", "Patient"), result.patient_id),
    row(element("th", "Study"), result.study_instance_uid),
    row(element("th", "Reference"), result.reference.modality),
    row(element("th", "Created"), result.created_at || "(not recorded)"),
    row(element("th", "Result"), result.result_id),
  );
  const volumes = document.getElementById("volumes");
  for (const [key, name] of REGIONS) {
    const cell = element("td", result.volumes_ml[key].toFixed(3), "num");
    cell.dataset.region = key;
    volumes.append(row(element("th", name), cell));
  }
  const series = document.getElementById("series");
  for (const [modality, ref] of Object.entries(result.series)) {
    const name = modality + (modality === result.reference.modality ? " (reference)" : "");
    const tr = row(element("th", name), ref.series_description || "(no description)");
    tr.dataset.modality = modality;
    tr.title = ref.series_instance_uid;
    series.append(tr);
  }
  for (const modality of result.missing_sequences || []) {
    series.append(row(element("th", modality), element("td", "missing: segmented without it", "muted")));
  }
  const warnings = result.warnings || [];
  document.getElementById("warnings-box").hidden = warnings.length === 0;
  for (const text of warnings) document.getElementById("warnings").append(element("li", text));
  const model = result.model;
  document.getElementById("model").textContent = model
    ? `${model.name} ${model.version} (${model.network} network)`
    : "(not recorded)";
}

// The change of each region since the patient's previous study with a result of the same model (from the
// timeline); the link to the timeline page. Shown when there is a prior study; the viewer does not wait.
async function priorChange(result) {
  const patient = encodeURIComponent(result.patient_id);
  document.getElementById("timeline-link").href = `/patients/${patient}/timeline/view`;
  const timeline = await tumorseg.json(await tumorseg.authorisedFetch(`/patients/${patient}/timeline`));
  const compared = timeline.studies.filter((s) => s.current_model && s.volumes_ml);
  const here = compared.findIndex((s) => s.result_id === result.result_id);
  if (here > 0) {
    const { element, row } = tumorseg;
    const prior = compared[here - 1];
    document.getElementById("prior-date").textContent = `against ${prior.study_date || "an undated study"}; ${timeline.research_note}`;
    for (const [key, name] of REGIONS) {
      const now = result.volumes_ml[key];
      const before = prior.volumes_ml[key];
      if (now === null || now === undefined || before === null || before === undefined) continue;
      const delta = now - before;
      const relative = before >= 1.0 ? ` (${delta >= 0 ? "+" : ""}${((100 * delta) / before).toFixed(0)} %)` : "";
      const cell = element("td", `${delta >= 0 ? "+" : ""}${delta.toFixed(2)} mL${relative}`, "num");
      cell.dataset.region = key;
      document.getElementById("prior").append(row(element("th", name), cell));
    }
    document.getElementById("prior-box").hidden = false;
  }
  document.documentElement.dataset.priorReady = "true";
}

function labelToggles(nv, mask, counts) {
  const visible = new Set(Object.keys(LABELS).map(Number));
  const box = document.getElementById("labels");
  for (const [label, [abbreviation, rgb]] of Object.entries(LABELS)) {
    const toggle = tumorseg.element("label", null, "toggle");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.checked = true;
    input.dataset.label = label;
    input.addEventListener("change", () => {
      if (input.checked) visible.add(Number(label)); else visible.delete(Number(label));
      mask.setColormapLabel(labelColormap(visible));
      nv.updateGLVolume();
    });
    const count = counts[label] || 0;
    const swatch = tumorseg.element("span", null, "swatch");
    swatch.style.background = `rgb(${rgb.join(", ")})`; // the colour of the overlay, from LABELS
    toggle.append(input, swatch, `${label} ${abbreviation}` + (count ? "" : " (none in the mask)"));
    box.append(toggle);
  }
  mask.setColormapLabel(labelColormap(visible));
}

function opacityControl(nv) {
  const slider = document.getElementById("opacity");
  const shown = document.getElementById("opacity-value");
  const apply = () => {
    nv.setOpacity(1, Number(slider.value));
    shown.textContent = Number(slider.value).toFixed(2);
  };
  slider.addEventListener("input", apply);
  apply();
}

async function downloadMask(result) {
  const response = await tumorseg.fetchWithKey(result.mask_url);
  if (!response.ok) return tumorseg.status(`mask download failed: HTTP ${response.status}`, true);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${result.result_id}_mask.nii.gz`;
  link.click();
  URL.revokeObjectURL(link.href);
}

function nextFrame() {
  return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
}

async function main() {
  const id = resultId();
  const result = await tumorseg.json(await tumorseg.authorisedFetch(`/results/${id}`));
  if (!result.reference_url) {
    throw new Error("this result was made before the viewer existed (it has no reference volume); segment the study again");
  }
  tumorseg.status("loading the volumes…");
  document.getElementById("viewer").hidden = false;
  fillTables(result);
  priorChange(result).catch(() => { document.documentElement.dataset.priorReady = "false"; });
  const nv = new niivue.Niivue({
    backColor: [0.07, 0.075, 0.09, 1],
    crosshairColor: [0.3, 0.6, 1.0, 1],
    show3Dcrosshair: false,
    isColorbar: false,
    showLegend: false,
    isRadiologicalConvention: true,
    multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
    dragAndDropEnabled: false,
    isNearestInterpolation: false,
  });
  await nv.attachToCanvas(document.getElementById("gl"));
  const headers = tumorseg.headers();
  await nv.loadVolumes([
    { url: result.reference_url, headers, name: "reference.nii.gz" },
    { url: result.mask_url, headers, name: "mask.nii.gz", opacity: 0.6 },
  ]);
  const [reference, mask] = nv.volumes;
  const { counts, centre } = maskStatistics(mask);
  labelToggles(nv, mask, counts);
  opacityControl(nv);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.scene.crosshairPos = voxelToFrac(nv, mask, centre);
  nv.updateGLVolume();
  document.getElementById("download-mask").addEventListener("click", () => downloadMask(result));
  await nextFrame();
  window.tumorsegViewer = {
    nv,
    result,
    voxelCounts: counts,
    centreVoxel: centre,
    crosshairVoxel: () => crosshairVoxel(nv, mask),
    dims: { reference: reference.hdr.dims.slice(1, 4), mask: mask.hdr.dims.slice(1, 4) },
  };
  tumorseg.status(`${result.reference.modality} with the mask: ${Object.keys(result.series).join(", ")}`);
  document.documentElement.dataset.viewerReady = "true";
}

main().catch((error) => {
  tumorseg.status(`cannot show this result: ${error.message}`, true);
  document.documentElement.dataset.viewerError = error.message;
});
