// Loads DICOM with DWV's own URL loading and reads back what DWV decoded, for tests/e2e/test_third_party_dwv.py.
import * as dwv from "./node_modules/dwv/dist/dwv.min.js";

function base64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// Resolves with the decoded image (size, per-slice SOP Instance UIDs, the stored values, a few rescaled values),
// rejects with DWV's error.
window.loadWithDwv = (urls, requestHeaders) => new Promise((resolve, reject) => {
  const app = new dwv.App();
  app.init(new dwv.AppOptions({"*": [new dwv.ViewConfig("layerGroup0")]}));
  let failure = null;
  app.addEventListener("error", (event) => { failure = event.error || event; });
  app.addEventListener("abort", () => { failure = failure || new Error("aborted"); });
  app.addEventListener("loadend", (event) => {
    if (failure) {
      reject(new Error(`DWV: ${failure.message || failure}`));
      return;
    }
    const image = app.getData(event.dataid).image;
    const [columns, rows, slices] = image.getGeometry().getSize().getValues();
    const uids = [];
    const rescaled = [];
    for (let k = 0; k < slices; ++k) {
      uids.push(image.getImageUid(new dwv.Index([0, 0, k])));
      rescaled.push([image.getRescaledValue(0, 0, k), image.getRescaledValue(columns >> 1, rows >> 1, k)]);
    }
    const buffer = image.getBuffer();
    resolve({
      version: dwv.getDwvVersion(),
      size: [columns, rows, slices],
      uids,
      rescaled,
      type: buffer.constructor.name,
      data: base64(buffer),
    });
  });
  app.loadURLs(urls, {requestHeaders});
});
window.dwvReady = true;
