// Starts the vendored Swagger UI (vendor/swagger-ui/SWAGGER.md) on this service's OpenAPI document. A
// file of its own rather than FastAPI's inline script: the page's Content-Security-Policy allows scripts
// from this origin only. Nothing here reaches another host: no validator badge (validatorUrl null), no
// standalone preset (its top bar loads any URL typed into it), and the API key given to "Authorize" lives
// in this page only (persistAuthorization false: not written to localStorage, gone on reload).
"use strict";

window.tumorsegDocs = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  persistAuthorization: false,
});
