// The timeline page: GET /patients/{patient_id}/timeline (with the key, as the other pages), the volumes of
// each region over time as a plain SVG chart (each point links to that study's viewer), the change
// against the baseline and the nadir as a table, and the service's research-only sentence.
"use strict";

const REGIONS = [
  ["wt", "WT whole tumour", "#4ea1ff"],
  ["tc", "TC tumour core", "#ff6b6b"],
  ["et", "ET enhancing", "#ffd84e"],
];
const SVG = "http://www.w3.org/2000/svg";
const BOX = { width: 900, height: 320, left: 60, right: 50, top: 15, bottom: 40 };

function patientId() {
  // /patients/{patient_id}/timeline/view: the id as the server received it (percent-decoded).
  const match = window.location.pathname.match(/^\/patients\/(.+)\/timeline\/view$/);
  return match ? decodeURIComponent(match[1]) : "";
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function change(c) {
  if (!c) return "";
  const relative = c.relative === null ? "" : ` (${c.relative >= 0 ? "+" : ""}${(100 * c.relative).toFixed(0)} %)`;
  return `${c.absolute_ml >= 0 ? "+" : ""}${c.absolute_ml.toFixed(2)} mL${relative}`;
}

// x by date (days), y by volume; one polyline per region, one linked circle per study and region.
function drawChart(points) {
  const chart = document.getElementById("chart");
  const days = points.map((p) => Date.parse(p.study_date) / 86400000);
  const first = Math.min(...days);
  const span = Math.max(...days) - first || 1;
  const top = Math.max(1, ...points.flatMap((p) => REGIONS.map(([key]) => p.volumes_ml[key] || 0)));
  const width = BOX.width - BOX.left - BOX.right;
  const x = (d) => (points.length > 1 ? BOX.left + ((d - first) / span) * width : BOX.left + width / 2);
  const y = (v) => BOX.height - BOX.bottom - (v / top) * (BOX.height - BOX.top - BOX.bottom);
  for (let n = 0; n <= 4; n += 1) {
    const v = (top * n) / 4;
    chart.append(svg("line", { class: "grid", x1: BOX.left, x2: BOX.width - BOX.right, y1: y(v), y2: y(v) }));
    chart.append(svg("text", { x: BOX.left - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(v < 10 ? 1 : 0)));
  }
  chart.append(svg("line", { class: "axis", x1: BOX.left, x2: BOX.width - BOX.right, y1: y(0), y2: y(0) }));
  points.forEach((p, n) => {
    chart.append(svg("text", { x: x(days[n]), y: BOX.height - BOX.bottom + 18, "text-anchor": "middle" }, p.study_date));
  });
  for (const [key, name, colour] of REGIONS) {
    const line = points.map((p, n) => `${x(days[n]).toFixed(1)},${y(p.volumes_ml[key] || 0).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { class: "line", points: line, stroke: colour }));
    points.forEach((p, n) => {
      const link = svg("a", { href: p.viewer_url, "data-study": p.study_instance_uid, "data-region": key });
      const dot = svg("circle", { cx: x(days[n]), cy: y(p.volumes_ml[key] || 0), r: 5, fill: colour });
      dot.append(svg("title", {}, `${name}: ${(p.volumes_ml[key] || 0).toFixed(2)} mL on ${p.study_date}`));
      link.append(dot);
      chart.append(link);
    });
    const swatch = tumorseg.element("span", name);
    const box = svg("svg", { width: 12, height: 12, viewBox: "0 0 12 12" });
    box.append(svg("rect", { width: 12, height: 12, fill: colour }));
    swatch.prepend(box, " ");
    document.getElementById("legend").append(swatch);
  }
}

function fillTable(timeline) {
  const { element, row } = tumorseg;
  const body = document.querySelector("#studies tbody");
  for (const s of timeline.studies) {
    const study = element("td");
    if (s.viewer_url) {
      const a = element("a", s.study_instance_uid);
      a.href = s.viewer_url;
      study.append(a);
    } else {
      study.append(element("span", s.study_instance_uid, "muted"));
    }
    const status = s.status + (s.reason ? `: ${s.reason}` : "") + (s.model && !s.current_model ? ` (model ${s.model.name} ${s.model.version}, not compared)` : "");
    const v = s.volumes_ml;
    const volumes = v ? [v.et, v.tc, v.wt].map((x) => (x === null || x === undefined ? "–" : x.toFixed(2))).join(" / ") : "";
    const flags = [s.baseline ? "baseline" : "", s.progression_threshold_crossed ? "ET ≥ +40 % from nadir" : "", s.response_threshold_crossed ? "ET ≤ −65 % from baseline" : ""].filter(Boolean).join("; ");
    const note = element("td", flags + (s.note ? ` ${s.note}` : ""), "flag");
    const tr = row(s.study_date || "", study, status, element("td", volumes, "num"), change((s.change_from_baseline || {}).et), change((s.change_from_nadir || {}).et), note);
    tr.dataset.study = s.study_instance_uid;
    body.append(tr);
  }
}

async function main() {
  const id = patientId();
  const timeline = await tumorseg.json(await tumorseg.authorisedFetch(`/patients/${encodeURIComponent(id)}/timeline`));
  document.getElementById("patient").textContent = `Patient ${timeline.patient_id}`;
  document.getElementById("model").textContent = `changes compared for model ${timeline.model.name} ${timeline.model.version}`;
  document.getElementById("research-note").textContent = timeline.research_note;
  const points = timeline.studies.filter((s) => s.current_model && s.volumes_ml && s.study_date);
  if (points.length) drawChart(points);
  fillTable(timeline);
  document.getElementById("timeline").hidden = false;
  tumorseg.status(points.length ? "" : "no study of this patient has a result of the current model yet");
  document.documentElement.dataset.pageReady = "true";
}

main().catch((error) => tumorseg.status(`cannot show the timeline: ${error.message}`, true));
