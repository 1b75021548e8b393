// Runs dicomweb-client's own calls (XMLHttpRequest, as in OHIF) and dcmjs for tests/e2e/test_ohif_client.py.
// Bytes travel to the test as base64; a failed request comes back as {error: {status, body}}: what OHIF's code
// sees of it (the client's Error with .status and .response).
"use strict";

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function unbase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; ++i) bytes[i] = raw.charCodeAt(i);
  return bytes.buffer;
}

// What a call resolved with, made JSON: ArrayBuffers (alone or as the parts of a multipart answer) as base64.
function portable(value) {
  if (value instanceof ArrayBuffer) return {bytes: base64(value)};
  if (Array.isArray(value)) return value.map(portable);
  return value;
}

function errorOf(error) {
  if (error && "status" in error) {
    let body = error.response;
    if (body instanceof ArrayBuffer) body = new TextDecoder().decode(body);
    return {error: {status: error.status, body, message: error.message}};
  }
  return {error: {status: null, message: String(error && error.message || error)}};
}

function client(config) {
  return new DICOMwebClient.api.DICOMwebClient({url: config.url, headers: config.headers || {}, verbose: false,
    singlepart: config.singlepart || false});
}

// One call of the client: client(config)[method](options).
window.callClient = async (config, method, options) => {
  try {
    return {value: portable(await client(config)[method](options))};
  } catch (error) {
    return errorOf(error);
  }
};

// OHIF's path for metadata: the DICOM JSON naturalized by dcmjs (DicomMetaDictionary.naturalizeDataset).
window.naturalizedMetadata = async (config, method, options) => {
  try {
    const instances = await client(config)[method](options);
    return {value: instances.map((json) => dcmjs.data.DicomMetaDictionary.naturalizeDataset(json))};
  } catch (error) {
    return errorOf(error);
  }
};

// retrieveInstance, then dcmjs reads the Part 10 bytes: the bytes and what dcmjs read of them.
window.retrieveAndParse = async (config, options) => {
  try {
    const buffer = await client(config).retrieveInstance(options);
    const dicomDict = dcmjs.data.DicomMessage.readFile(buffer);
    const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomDict.dict);
    const meta = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomDict.meta);
    const pixels = dataset.PixelData;
    delete dataset.PixelData;
    return {value: {
      bytes: base64(buffer), meta, dataset,
      pixelFrames: Array.isArray(pixels) ? pixels.map(base64) : [],
    }};
  } catch (error) {
    return errorOf(error);
  }
};

// Files read by dcmjs and written again by dcmjs (DicomDict.write()) with the given UIDs, then stored by the
// client's own multipart writer (storeInstances). Returns the written files and the STOW answer.
window.rewriteAndStore = async (config, files, studyInstanceUID) => {
  const written = files.map(({bytes, uids}) => {
    const dicomDict = dcmjs.data.DicomMessage.readFile(unbase64(bytes));
    const dataset = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomDict.dict);
    Object.assign(dataset, uids);
    dicomDict.dict = dcmjs.data.DicomMetaDictionary.denaturalizeDataset(dataset);
    if (uids.SOPInstanceUID) dicomDict.meta["00020003"].Value = [uids.SOPInstanceUID];
    return dicomDict.write();
  });
  const options = {datasets: written};
  if (studyInstanceUID) options.studyInstanceUID = studyInstanceUID;
  try {
    const answer = await client(config).storeInstances(options);
    return {value: {written: written.map(base64), answer: portable(answer)}};
  } catch (error) {
    return {...errorOf(error), written: written.map(base64)};
  }
};

window.ohifReady = typeof DICOMwebClient === "object" && typeof dcmjs === "object";
