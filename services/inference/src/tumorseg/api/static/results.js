// The results page: GET /results (newest first, paged with ?offset= in this page's URL), a thumbnail of
// each preview fetched with the key and shown as a blob: URL, each row linking to its viewer.
"use strict";

const PAGE = 20;

function offsetFromUrl() {
  const value = Number(new URLSearchParams(window.location.search).get("offset") || 0);
  return Number.isInteger(value) && value >= 0 ? value : 0;
}

async function thumbnail(url) {
  const img = document.createElement("img");
  img.alt = "preview";
  if (!url) return img;
  const response = await tumorseg.fetchWithKey(url);
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
  return img;
}

async function main() {
  const { element, row } = tumorseg;
  const offset = offsetFromUrl();
  const page = await tumorseg.json(await tumorseg.authorisedFetch(`/results?limit=${PAGE}&offset=${offset}`));
  const body = document.querySelector("#results tbody");
  for (const result of page.results) {
    const who = element("td");
    who.append(element("div", result.patient_id), element("div", result.study_instance_uid, "muted"));
    const v = result.volumes_ml;
    const link = element("td");
    if (result.viewer_url) {
      const a = element("a", "open viewer");
      a.href = result.viewer_url;
      link.append(a);
    } else {
      link.append(element("span", "(made before the viewer)", "muted"));
    }
    const timeline = element("a", "patient timeline");
    timeline.href = `/patients/${encodeURIComponent(result.patient_id)}/timeline/view`;
    timeline.className = "timeline";
    link.append(element("br"), timeline);
    const image = element("td");
    image.append(await thumbnail(result.preview_url));
    const tr = row(
      image,
      who,
      result.created_at || "",
      element("td", `${v.wt.toFixed(1)} / ${v.tc.toFixed(1)} / ${v.et.toFixed(1)}`, "num"),
      result.model ? `${result.model.name} ${result.model.version}` : "",
      link,
    );
    tr.dataset.resultId = result.result_id;
    body.append(tr);
  }
  const last = offset + page.results.length;
  document.getElementById("page-info").textContent = page.total
    ? `${offset + 1}–${last} of ${page.total}`
    : "no results yet: POST /segment/{patient_id} makes one";
  const go = (to) => { window.location.search = `?offset=${to}`; };
  const newer = document.getElementById("newer");
  const older = document.getElementById("older");
  newer.disabled = offset === 0;
  older.disabled = last >= page.total;
  newer.addEventListener("click", () => go(Math.max(0, offset - PAGE)));
  older.addEventListener("click", () => go(last));
  document.getElementById("list").hidden = false;
  tumorseg.status("");
  document.documentElement.dataset.pageReady = "true";
}

main().catch((error) => tumorseg.status(`cannot list the results: ${error.message}`, true));
