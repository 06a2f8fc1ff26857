#!/usr/bin/env bash
# Refreshes the vendored NiiVue (the viewer page's WebGL2 volume viewer) from the npm registry:
#   NIIVUE_VERSION=0.69.0 bash scripts/vendor_niivue.sh     (`make vendor-niivue`)
# Writes api/static/vendor/niivue.umd.js (the self-contained UMD build: global `niivue`) and NIIVUE.md
# (version, tarball integrity, sha256, licence). Nothing is fetched at run time: hospital networks are closed.
set -euo pipefail
version="${NIIVUE_VERSION:?set NIIVUE_VERSION}"
dest="$(cd "$(dirname "$0")/.." && pwd)/services/inference/src/tumorseg/api/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@niivue/niivue@${version}" >/dev/null
tar xzf "niivue-niivue-${version}.tgz"
licence="$(node -p "require('./package/package.json').license")"
integrity="$(npm view "@niivue/niivue@${version}" dist.integrity)"
mkdir -p "$dest"
cp package/dist/niivue.umd.js "$dest/niivue.umd.js"
sha="$(sha256sum "$dest/niivue.umd.js" | cut -d' ' -f1)"
cat > "$dest/NIIVUE.md" <<NOTE
# Vendored: NiiVue ${version}

- File: \`niivue.umd.js\`, the package's \`dist/niivue.umd.js\` (UMD build, global \`niivue\`), unmodified.
- Source: npm \`@niivue/niivue@${version}\` (${integrity}); https://github.com/niivue/niivue
- sha256 of the file: \`${sha}\`
- Licence: ${licence} (below). The build bundles gl-matrix, fflate, nifti-reader-js, zarrita,
  @lukeed/uuid, array-equal (MIT) and @ungap/structured-clone (ISC).
- Refresh: \`make vendor-niivue NIIVUE_VERSION=x.y.z\`, then run the browser test
  (\`pytest tests/integration/test_viewer.py\`).

BSD 2-Clause License

Copyright (c) 2021, Niivue
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
NOTE
echo "NiiVue ${version} -> $dest/niivue.umd.js ($sha)"
