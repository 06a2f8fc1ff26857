// Shared by the tumorseg pages. The API key, when the service asks for one (a 401 answer), is asked for
// once per tab and kept in sessionStorage; every data request sends it as the X-API-Key header, never in
// a URL (URLs end up in logs and in the browser history).
"use strict";

const tumorseg = (() => {
  const STORAGE = "tumorseg.apiKey";

  function headers() {
    const key = sessionStorage.getItem(STORAGE);
    return key ? { "X-API-Key": key } : {};
  }

  function fetchWithKey(path) {
    return fetch(path, { headers: headers(), cache: "no-store", credentials: "omit" });
  }

  // The key form, made once, under the page's header.
  function keyForm() {
    const existing = document.getElementById("key-form");
    if (existing) return existing;
    const form = document.createElement("form");
    form.id = "key-form";
    form.hidden = true;
    const label = element("label", "This service needs an API key (TUMORSEG_API_KEY). It is kept for this tab only.");
    label.htmlFor = "key-input";
    const input = document.createElement("input");
    Object.assign(input, { id: "key-input", type: "password", autocomplete: "off", required: true });
    const button = element("button", "Open");
    button.type = "submit";
    const message = element("p");
    message.id = "key-message";
    form.append(label, input, button, message);
    document.querySelector("header").after(form);
    return form;
  }

  // Shows the key form and resolves once the user submitted a key (stored for the tab).
  function askForKey(message) {
    const form = keyForm();
    const input = document.getElementById("key-input");
    document.getElementById("key-message").textContent = message;
    form.hidden = false;
    input.value = "";
    input.focus();
    return new Promise((resolve) => {
      form.addEventListener(
        "submit",
        (event) => {
          event.preventDefault();
          sessionStorage.setItem(STORAGE, input.value);
          form.hidden = true;
          resolve();
        },
        { once: true },
      );
    });
  }

  // GET `path` with the key; while the answer is 401, ask for the key (again) and retry.
  async function authorisedFetch(path) {
    for (;;) {
      const response = await fetchWithKey(path);
      if (response.status !== 401) return response;
      const tried = sessionStorage.getItem(STORAGE) !== null;
      await askForKey(tried ? "That key was refused: check TUMORSEG_API_KEY." : "");
    }
  }

  // The JSON body of a successful answer; an Error with the service's detail otherwise.
  async function json(response) {
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(`${response.status}: ${body.detail || response.statusText}`);
    return body;
  }

  function status(text, isError = false) {
    const element = document.getElementById("status");
    element.textContent = text;
    element.classList.toggle("error", isError);
  }

  // A cell or element with text content (never innerHTML: the values come from DICOM headers).
  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(...cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.append(cell instanceof Node ? cell : element("td", cell));
    return tr;
  }

  return { headers, fetchWithKey, authorisedFetch, json, status, element, row };
})();
