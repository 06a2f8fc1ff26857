#!/usr/bin/env bash
# Refreshes the vendored Swagger UI (the page at /docs) from the npm registry:
#   SWAGGER_UI_VERSION=5.36.0 bash scripts/vendor_swagger.sh     (`make vendor-swagger`)
# Writes api/static/vendor/swagger-ui/: swagger-ui-bundle.js (global `SwaggerUIBundle`, its bundled
# dependencies' notices in swagger-ui-bundle.js.LICENSE.txt), swagger-ui.css, the package's LICENSE and
# NOTICE, and SWAGGER.md (version, tarball integrity, sha256 of each file). Only what /docs loads: no
# standalone preset (its top bar fetches any URL typed into it), no source maps, no favicons.
# Nothing is fetched at run time: hospital networks are closed.
set -euo pipefail
version="${SWAGGER_UI_VERSION:?set SWAGGER_UI_VERSION}"
dest="$(cd "$(dirname "$0")/.." && pwd)/services/inference/src/tumorseg/api/static/vendor/swagger-ui"
files=(swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "swagger-ui-dist@${version}" >/dev/null
tar xzf "swagger-ui-dist-${version}.tgz"
licence="$(node -p "require('./package/package.json').license")"
integrity="$(npm view "swagger-ui-dist@${version}" dist.integrity)"
rm -rf "$dest"
mkdir -p "$dest"
for f in "${files[@]}"; do
  cp "package/$f" "$dest/$f"
done
{
  echo "# Vendored: Swagger UI ${version}"
  echo
  echo "- Files: from the npm package \`swagger-ui-dist@${version}\`, unmodified: \`swagger-ui-bundle.js\`"
  echo "  (global \`SwaggerUIBundle\`), \`swagger-ui.css\`, and the package's \`LICENSE\` and \`NOTICE\`;"
  echo "  \`swagger-ui-bundle.js.LICENSE.txt\` holds the notices of the libraries the bundle includes."
  echo "- Source: npm \`swagger-ui-dist@${version}\` (${integrity}); https://github.com/swagger-api/swagger-ui"
  echo "- Licence: ${licence} (\`LICENSE\`, \`NOTICE\`)."
  echo "- Started by \`../../docs.js\` from \`../../docs.html\`, served at \`/docs\` (no inline script: the"
  echo "  page's Content-Security-Policy allows scripts from this origin only)."
  echo "- Refresh: \`make vendor-swagger SWAGGER_UI_VERSION=x.y.z\`, then run the browser test"
  echo "  (\`pytest tests/integration/test_docs_offline.py\`) and the checksum test"
  echo "  (\`pytest tests/unit/test_docs_assets.py\`)."
  echo
  echo "sha256 of the files:"
  echo
  for f in "${files[@]}"; do
    echo "- \`$f\`: \`$(sha256sum "$dest/$f" | cut -d' ' -f1)\`"
  done
} > "$dest/SWAGGER.md"
echo "Swagger UI ${version} -> $dest"
