// The viewer page: read the link, list the series, show one as a scrollable stack, report progress and errors.
import './style.css';
import { DicomWebClient, GatewayError, dicom, framesOf, tilePositions } from './dicomweb.js';
import { classify, hideError, showError } from './errors.js';
import { dicomwebRoot, parseFragment, takeLinkFromLocation } from './fragment.js';
import { credential, keepRenewing, withCurrentToken } from './session.js';

// Cornerstone (core and image loader) loads while the study's series list is fetched, not before it.
let stageModule = import('./stage.js');

/** The stage module; a fetch of its code lost to the network is the network's failure (`unavailable`), asked again
 * on the next try (a rejected import stays rejected). */
function loadStage() {
  return stageModule.catch(() => {
    stageModule = import('./stage.js');
    throw new GatewayError(0, 'network', 'the viewer code could not be loaded');
  });
}

// Fetch every frame of a series up front when it is this small (a CT series); larger ones (whole-slide images)
// load around the current frame only.
const PREFETCH_ALL = 600;
const PREFETCH_AROUND = 8;
// A frame that failed this way says the network or the gateway's storage is away for now (a phone between cells,
// a storage outage's 503), not that the image is bad: wait for it and load the frame again.
const TRANSIENT = new Set([0, 502, 503, 504]);
const RETRY_FIRST_MS = 2000;
const RETRY_MAX_MS = 30000;
// The largest image drawn, Rows x Columns: 16384 x 16384, Chrome's largest canvas. A larger one (a single frame of
// 40000 x 40000: a 50 MB RLE file decodes to 3.2 GB) was fetched and decoded until the tab gave up, and the
// page said "Loading series…" for good.
const MAX_PIXELS = 16384 * 16384;

const $ = (id) => document.getElementById(id);
const state = {
  client: null,
  study: null,
  stage: null,
  series: null,
  tiles: null,
  loaded: new Set(),
  failed: false,
  probing: false,
  waiting: false, // the network or storage is away: failed frames are loaded again once it answers
  retryMs: RETRY_FIRST_MS,
  retried: false, // failed frames were asked again: the next that loads ends the outage's message
  redrawing: false, // the stage is drawing its slice again (drawIfEmpty)
  lostSlice: null, // the slice moved to whose own load failed: the stage still shows the one before
  failedFrames: new Set(), // frames of the open series whose load failed, counted as settled by the progress bar
  unshown: new Set(), // frames of the open series whose load failed with the gateway answering: a bad frame
  onFrame: null, // the open series' prefetch callback (progress, failures)
  toolsBound: false,
  noImages: new Set(), // series found to hold no image (a report, a PDF...): their buttons are disabled
};

/**
 * The two moments the mobile benchmark (bench/b7_mobile.py) reads: the first image on screen and every slice at
 * full quality. Each is a performance mark (time since navigation) and a data attribute on the viewport.
 */
function moment(name) {
  if (performance.getEntriesByName(name).length) return;
  const mark = performance.mark(name);
  const key = { 'dgw-first-image': 'firstImageMs', 'dgw-first-cornerstone-image': 'firstCornerstoneMs' }[name];
  $('viewport').dataset[key || 'fullQualityMs'] = String(Math.round(mark.startTime));
}

function setStatus() {
  const stage = state.stage;
  const el = $('viewport');
  if (!stage || !stage.imageIds.length) return;
  const index = stage.index;
  el.dataset.index = String(index);
  el.dataset.count = String(stage.imageIds.length);
  const s = state.series;
  const voi = stage.isColor() ? null : stage.voi();
  $('overlay-tl').textContent = `${s.modality} ${s.description}`.trim();
  const full = stage.isFullQuality();
  el.dataset.quality = full ? 'full' : 'preview';
  // A slice whose frame failed (damaged, undecodable): whatever the stage holds for it is covered, and it says so.
  const unshown = state.unshown.has(stage.imageIds[index]);
  $('unshown').hidden = !unshown;
  // Say so while the image on screen is a preview decoded from the first bytes of its lossless codestream.
  let frame = state.tiles ? tileLabel(index) : `Image ${index + 1} / ${stage.imageIds.length}`;
  if (unshown) frame += ' · cannot be shown';
  else if (!full) frame += ' · preview, loading full quality';
  const level = voi && !unshown ? `W ${Math.round(voi.width)}  L ${Math.round(voi.center)}` : '';
  $('overlay-br').textContent = level ? `${frame}\n${level}` : frame;
  // What a screen reader says of the image (role img: Cornerstone's canvas and unnamed SVG layer are not read):
  // the series, the image and its window, as the overlays show them.
  const spoken = [$('overlay-tl').textContent, frame.replace(' / ', ' of '), level.replace('  ', ' ')];
  el.setAttribute('aria-label', spoken.filter(Boolean).join(', '));
}

/** Note how a frame's load ended: failed with the gateway answering (not an outage, which is waited out), or loaded. */
function noteFrame(imageId, error) {
  if (!imageId) return;
  if (!error) state.unshown.delete(imageId);
  else if (!TRANSIENT.has(statusOf(error))) state.unshown.add(imageId);
  setStatus();
}

/** Frame ``index``'s place on the slide's grid of tiles: a sparse slide's own, else row by row. */
function tileAt(tiles, index) {
  return tiles.at ? tiles.at[index] : { column: index % tiles.columns, row: Math.floor(index / tiles.columns) };
}

function tileLabel(index) {
  const { column, row } = tileAt(state.tiles, index);
  return `Tile ${index + 1} / ${state.stage.imageIds.length} (column ${column + 1}, row ${row + 1})`;
}

/** The frame of the nearest tile above (step -1) or below (1) frame ``index`` in its column; ``index`` when none. */
function tileInColumn(index, step) {
  const { at, columns } = state.tiles;
  if (!at) return index + step * columns;
  const here = at[index];
  let found = index;
  at.forEach((place, i) => {
    const rows = (place.row - here.row) * step;
    if (place.column === here.column && rows > 0 && (found === index || rows < (at[found].row - here.row) * step)) {
      found = i;
    }
  });
  return found;
}

/**
 * Until Cornerstone draws, show the gateway's rendered JPEG of the first slice (a few tens of KB, with the file's
 * window): a phone on a slow network sees the image before ~1 MB of imaging code has arrived. It is a preview like
 * the progressive ones: the overlay says so, and the lossless image replaces it.
 */
function showPlaceholder(series, info) {
  const { frames, tiles, start, tooLarge } = info;
  const frame = frames[start];
  if (tiles || tooLarge || !frame) return;  // (nor is a frame too large to draw rendered: the gateway's 406)
  const el = $('viewport');
  const box = el.getBoundingClientRect();
  const scale = window.devicePixelRatio || 1;
  const size = `${Math.max(64, Math.round(box.width * scale))},${Math.max(64, Math.round(box.height * scale))}`;
  const img = document.createElement('img');
  img.id = 'placeholder';
  img.alt = '';
  img.decoding = 'async';
  img.referrerPolicy = 'no-referrer';
  img.addEventListener('load', () => {
    if (!img.isConnected) return;
    moment('dgw-first-image');
    el.dataset.quality = 'preview';
    $('overlay-br').textContent = `Image ${start + 1} / ${frames.length} · preview, loading full quality`;
  });
  img.src = `${state.client.frameUrl(state.study, series.uid, frame.sop, frame.frame)}/rendered?viewport=${size}&quality=80`;
  $('stage').append(img);
}

function removePlaceholder() {
  document.getElementById('placeholder')?.remove();
}

function setProgress(done, total, label) {
  const box = $('progress');
  const el = $('viewport');
  el.dataset.loaded = String(done);
  if (done >= total) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  $('progress-bar').style.width = `${Math.round((100 * done) / Math.max(total, 1))}%`;
  $('progress-text').textContent = label || `Loading ${done} / ${total}`;
}

/** The HTTP status of a failed frame load (the image loader rejects with its XHR; 0: no answer), or null. */
function statusOf(error) {
  const status = error?.status ?? error?.request?.status;
  return typeof status === 'number' ? status : null;
}

/**
 * An image failed (`imageId` when known, the loader's `error`): ask the gateway why (token expired? gateway down?)
 * and show the error screen if it says so. A network or storage outage ends nothing: the images on screen stay, and
 * the failed frames are loaded again once the gateway answers (the address bar no longer holds the token, so a reload
 * could not bring the study back).
 */
async function onLoadFailure(imageId = null, error = null) {
  // One question at a time: a dead gateway fails every queued frame at once.
  if (state.failed || state.probing || state.waiting) return;
  state.probing = true;
  try {
    await state.client.json(`/studies/${state.study}/series?limit=1`);
    if (TRANSIENT.has(statusOf(error))) {
      waitForGateway(statusOf(error));
      return;
    }
    // The link is fine, so the image itself cannot be shown (a pixel format the decoders lack, a damaged
    // codestream, frames the gateway does not serve): with nothing of this series on screen, say so plainly
    // rather than leave a black stage.
    const stage = state.stage;
    const onScreen = typeof imageId !== 'string' || (stage && imageId === stage.imageIds[stage.index]);
    if (stage && !stage.hasImage() && onScreen) {
      state.failed = true;
      showError('unsupported');
      return;
    }
    $('status').textContent = 'Some images could not be loaded.';
  } catch (probeError) {
    const kind = classify(probeError);
    if (kind === 'failed') {
      // The gateway answered, but not about the link: keep the images we have.
      $('status').textContent = 'Some images could not be loaded.';
      return;
    }
    if (kind === 'unavailable') {
      waitForGateway(probeError instanceof GatewayError ? probeError.status : null);
      return;
    }
    state.failed = true;
    showError(kind, probeError instanceof GatewayError ? probeError.status : null);
  } finally {
    state.probing = false;
  }
}

/**
 * The network or the gateway's storage is away: say so (over the image when one is on screen, else the error
 * screen), then load the failed frames again after a pause that doubles up to 30 s while they keep failing.
 */
function waitForGateway(status) {
  state.waiting = true;
  const stage = state.stage;
  if (stage && stage.hasImage()) $('status').textContent = 'Connection lost. Retrying…';
  else showError('unavailable', status || null, 'This page retries by itself.');
  const delay = state.retryMs;
  state.retryMs = Math.min(RETRY_MAX_MS, state.retryMs * 2);
  setTimeout(() => {
    state.waiting = false;
    if (!state.failed) retryFailedFrames();
  }, delay);
}

function retryFailedFrames() {
  const stage = state.stage;
  const ids = [...state.failedFrames].filter((id) => stage.imageIds.includes(id));
  state.failedFrames.clear();
  if (!ids.length || !state.onFrame) {
    // the failure was of a frame that has loaded since (the viewport's own request): nothing is left to wait for
    onRecovered();
    return;
  }
  ids.forEach((id) => state.loaded.delete(id));
  state.retried = true;
  state.onFrame.retrying(ids.length);
  stage.prefetch(ids, state.onFrame);
}

/**
 * The gateway answers again after an outage (a failed frame loaded again, or none was left to ask again): leave the
 * error screen, ask again for the thumbnails the outage lost, and draw the slice on screen if the stage is empty.
 */
function onRecovered() {
  state.retryMs = RETRY_FIRST_MS;
  if (!document.getElementById('error').hidden) hideError();
  if ($('status').textContent === 'Connection lost. Retrying…') $('status').textContent = '';
  currentThumbnails(true);
  drawIfEmpty();
}

/**
 * Point the series thumbnails not shown yet at the current DICOMweb root (a renewed token): the browser asks for a
 * lazy one only once it is scrolled into view, with the URL it has then, and the link's token has expired by then
 * (a study of many series on a phone: a 401 and an empty square each). `missing`: those that failed (an outage),
 * asked for again; else those not asked for yet or under way.
 */
function currentThumbnails(missing = false) {
  for (const button of document.querySelectorAll('#series button')) {
    const img = button.querySelector('img');
    if (img.naturalWidth || img.classList.contains('missing') !== missing) continue;
    img.classList.remove('missing');
    const url = state.client.thumbnailUrl(state.study, button.dataset.uid);
    // set again even when the same (the cookie's root): the browser asks for a failed one again
    if (missing || img.getAttribute('src') !== url) img.setAttribute('src', url);
  }
}

/**
 * Draw the slice on screen when the stage shows none, or still shows the one before a move whose load failed
 * (`imageId`, when given: only if it is that slice). The stage's own request for it can fail in an outage while the
 * prefetch's, sent later, loads it: nothing else drew it, and the study stayed black (or on the tile before, the
 * overlay naming it) with no message. Not behind the error screen: the hidden stage has no size to draw at.
 */
function drawIfEmpty(imageId = null) {
  const stage = state.stage;
  const current = stage.imageIds[stage.index];
  if (state.redrawing || $('app').hidden || (stage.hasImage() && state.lostSlice !== current)) return;
  if (imageId && imageId !== current) return;
  state.redrawing = true; // one at a time: every frame that loads again after an outage asks
  stage
    .redraw()
    .catch((error) => onLoadFailure(stage.imageIds[stage.index], error))
    .finally(() => {
      state.redrawing = false;
    });
}

/**
 * A frame failed to load: when it is the slice moved to (the stage keeps the one before), it is asked again with the
 * prefetch's failed frames and drawn once it loads (retryFailedFrames, drawIfEmpty).
 */
function onFrameFailed(imageId, error) {
  const stage = state.stage;
  if (imageId && imageId === stage.imageIds[stage.index]) {
    state.failedFrames.add(imageId);
    state.lostSlice = imageId;
  }
  onLoadFailure(imageId, error);
}

function prefetchAround(index) {
  const ids = state.stage.imageIds;
  const wanted = [];
  for (let d = 1; d <= PREFETCH_AROUND; d += 1) {
    for (const i of [index + d, index - d]) {
      if (i >= 0 && i < ids.length && !state.loaded.has(ids[i])) wanted.push(ids[i]);
    }
  }
  wanted.forEach((id) => state.loaded.add(id));
  state.stage.prefetch(wanted, state.onFrame);
}

/** What opening a series needs before Cornerstone: metadata, frames, where to start, and whether a derivative
 * exists. Runs while the image modules load. */
async function seriesInfo(series) {
  const { client, study } = state;
  const metadata = await client.metadata(study, series.uid);
  const frames = framesOf(metadata);
  // the tiles' grid is that of the level browsed (metadata[0] could be another level, a label or a report)
  const first = frames[0]?.instance || metadata[0] || {};
  const matrix = dicom.number(first, '00480006');
  const cols = dicom.number(first, '00280011');
  const tiles =
    frames.length > 1 && matrix && cols ? { columns: Math.ceil(matrix / cols), at: tilePositions(frames) } : null;
  // A slide's first tile is usually empty glass: start a tiled image at its centre tile (a sparse slide's nearest).
  let start = 0;
  if (tiles?.at) {
    const rows = Math.ceil((dicom.number(first, '00480007') ?? 0) / (dicom.number(first, '00280010') || 1));
    const away = (p) => Math.hypot(p.column - (tiles.columns - 1) / 2, p.row - (rows - 1) / 2);
    tiles.at.forEach((place, i) => {
      if (away(place) < away(tiles.at[start])) start = i;
    });
  } else if (tiles) {
    const rows = Math.ceil(frames.length / tiles.columns);
    start = Math.min(frames.length - 1, Math.floor(rows / 2) * tiles.columns + Math.floor(tiles.columns / 2));
  }
  // A stack the gateway has made its lossless derivative for loads progressively (preview, then full quality).
  const probe = frames[start];
  const shown = probe?.instance || {};
  const tooLarge = (dicom.number(shown, '00280010') ?? 0) * (dicom.number(shown, '00280011') ?? 0) > MAX_PIXELS;
  const progressive =
    !tooLarge &&
    !tiles &&
    frames.length <= PREFETCH_ALL &&
    Boolean(probe) &&
    (await client.hasDerivative(client.frameUrl(study, series.uid, probe.sop, probe.frame)));
  return {
    metadata,
    frames,
    tiles,
    start,
    progressive,
    tooLarge,
    color: (dicom.number(first, '00280002') ?? 1) > 1,
  };
}

/** The first series of the list that holds images, with its seriesInfo; null when none does. Each one found to hold
 * none (a structured report, a PDF: a series of their own, often numbered first) is remembered as such. */
async function firstWithImages(list) {
  for (const series of list) {
    const info = await seriesInfo(series);
    if (info.frames.length) return { series, info };
    markNoImages(series.uid); // its button, once listed (renderSeriesList marks those found before)
  }
  return null;
}

/** Mark a series' button as holding no image: disabled, and its label says so. */
function markNoImages(uid) {
  state.noImages.add(uid);
  const button = [...document.querySelectorAll('#series button')].find((b) => b.dataset.uid === uid);
  if (!button || button.disabled) return;
  button.disabled = true;
  button.title = 'No images in this series';
  button.querySelector('span').textContent += ' · no images';
}

/** A series chosen in the list: opened, unless it holds no image (then its button says so; the open one stays). */
async function selectSeries(series) {
  const info = await seriesInfo(series);
  if (!info.frames.length) {
    markNoImages(series.uid);
    return;
  }
  await openSeries(series, info);
}

async function openSeries(series, info = seriesInfo(series)) {
  const { client, study, stage } = state;
  state.series = series;
  state.loaded = new Set();
  state.failedFrames = new Set();
  state.unshown = new Set();
  state.onFrame = null;
  for (const button of document.querySelectorAll('#series button')) {
    button.setAttribute('aria-current', String(button.dataset.uid === series.uid));
  }
  const el = $('viewport');
  el.dataset.state = 'loading';
  setProgress(0, 1, 'Loading series…');
  const { frames, tiles, start, progressive, color, tooLarge } = await info;
  if (tooLarge) {
    state.failed = true;
    showError('unsupported');
    return;
  }
  const imageIds = stage.register(frames, (sop, frame) => client.frameUrl(study, series.uid, sop, frame));
  state.tiles = tiles;
  for (const button of document.querySelectorAll('#presets button')) button.disabled = color;

  el.dataset.progressive = String(progressive);
  const all = imageIds.length <= PREFETCH_ALL;
  const total = imageIds.length;
  let done = 0; // frames settled (loaded at full quality, or failed): the progress bar
  const onFrame = (id, error, preview) => {
    if (state.series !== series) return;
    if (!preview) noteFrame(id, error);
    if (error) {
      state.failedFrames.add(id);
      onLoadFailure(id, error);
    } else if (!preview && state.retried) {
      onRecovered();
    } else if (!preview) {
      drawIfEmpty(id);
    }
    if (!all) return;
    if (!preview) done += 1;
    setProgress(done, total);
    setStatus();
    if (done === total) moment('dgw-all-full-quality');
  };
  // frames loaded again after an outage settle once more
  onFrame.retrying = (count) => {
    if (!all) return;
    done -= count;
    setProgress(done, total);
  };
  state.onFrame = onFrame;
  await stage.show(imageIds, start, progressive, () => {
    removePlaceholder();
    moment('dgw-first-image');
    moment('dgw-first-cornerstone-image');
  });
  removePlaceholder();
  moment('dgw-first-image');
  moment('dgw-first-cornerstone-image');
  if (!state.toolsBound) {
    await stage.bindTools();
    state.toolsBound = true;
  }
  el.dataset.state = 'ready';
  el.dataset.series = series.uid;
  setStatus();

  if (all) {
    setProgress(0, total);
    imageIds.forEach((id) => state.loaded.add(id));
    stage.prefetch(imageIds, onFrame);
  } else {
    setProgress(1, 1);
    prefetchAround(start);
  }
}

function renderSeriesList(list) {
  const nav = $('series');
  nav.replaceChildren();
  for (const series of list) {
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.uid = series.uid;
    const img = document.createElement('img');
    img.alt = '';
    img.loading = 'lazy';
    img.decoding = 'async';
    img.referrerPolicy = 'no-referrer';
    img.src = state.client.thumbnailUrl(state.study, series.uid);
    img.addEventListener('error', () => img.classList.add('missing'));
    const label = document.createElement('span');
    const count = series.instances ? ` · ${series.instances}` : '';
    label.textContent = `${series.modality || '?'} ${series.description || ''}${count}`.trim();
    button.append(img, label);
    button.addEventListener('click', () => selectSeries(series).catch(fail));
    nav.append(button);
  }
  for (const uid of state.noImages) markNoImages(uid);
}

function fail(error) {
  if (state.failed) return;
  state.failed = true;
  // Log the kind only: error objects can carry URLs, and URLs carry the token.
  console.warn('viewer error:', classify(error));
  showError(classify(error), error instanceof GatewayError ? error.status : null);
}

function bindControls(stage) {
  for (const button of document.querySelectorAll('#presets button')) {
    button.addEventListener('click', () => {
      stage.setPreset(button.dataset.preset);
      setStatus();
    });
  }
  $('reset').addEventListener('click', () => {
    stage.reset();
    setStatus();
  });
  const keys = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 };
  window.addEventListener('keydown', (event) => {
    if (!stage.imageIds.length || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target instanceof HTMLButtonElement && (event.key === 'Enter' || event.key === ' ')) return;
    let target = null;
    // On a tiled slide, up/down go to the tile above or below on the slide.
    if (state.tiles && (event.key === 'ArrowUp' || event.key === 'ArrowDown')) {
      target = tileInColumn(stage.index, keys[event.key]);
    } else if (event.key in keys) target = stage.index + keys[event.key];
    else if (event.key === 'Home') target = 0;
    else if (event.key === 'End') target = stage.imageIds.length - 1;
    if (target === null) return;
    event.preventDefault();
    stage.go(target).catch((error) => onFrameFailed(stage.imageIds[stage.index], error));
  });
  const { Enums, eventTarget } = state;
  const el = $('viewport');
  el.addEventListener(Enums.Events.STACK_NEW_IMAGE, (event) => {
    if (event.detail?.imageId === state.lostSlice) state.lostSlice = null;
    setStatus();
    if (state.stage.imageIds.length > PREFETCH_ALL) prefetchAround(stage.index);
  });
  el.addEventListener(Enums.Events.VOI_MODIFIED, setStatus);
  eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_FAILED, (event) => {
    noteFrame(event.detail?.imageId, event.detail?.error);
    onFrameFailed(event.detail?.imageId, event.detail?.error);
  });
}

async function main() {
  // A portal that shows another study in the same iframe sets its src to that study's link: only the fragment
  // differs, so the browser keeps this page (a same-document navigation), which went on showing the study before,
  // the new token left in the address bar. A new link (a token, or another study) loads the page again with it.
  window.addEventListener('hashchange', () => {
    const next = parseFragment(window.location.hash);
    if (next.problem || next.token || next.study !== state.study) window.location.reload();
  });
  const link = takeLinkFromLocation();
  if (link.problem) {
    showError(link.problem === 'bad_token' ? 'revoked' : 'nolink');
    return;
  }
  state.study = link.study;
  credential.token = link.token;
  state.client = new DicomWebClient(dicomwebRoot(link.token));
  // Renewed tokens replace the link's in memory; the session's end or revocation shows the error screen.
  keepRenewing((token) => {
    state.client.root = dicomwebRoot(token);
    currentThumbnails();
  }, fail);
  await openStudy(link.study);
}

/** List the series and show the first; idempotent, so that a try the network or the gateway failed is made again. */
async function openStudy(study) {
  for (let delay = RETRY_FIRST_MS; ; delay = Math.min(RETRY_MAX_MS, delay * 2)) {
    try {
      await openStudyOnce(study);
      return;
    } catch (error) {
      // Offline, or the gateway down: the address bar no longer holds the token, so a reload cannot bring the
      // study back; this page must. Anything else (expired, forbidden...) ends here.
      if (state.failed || classify(error) !== 'unavailable') throw error;
      showError('unavailable', error.status || null, 'This page retries by itself.');
      await new Promise((resolve) => setTimeout(resolve, delay));
      if (state.failed) return;
      state.stage?.restartWorkers(); // started while the network was failing, they may be dead
      hideError();
    }
  }
}

async function openStudyOnce(study) {
  setProgress(0, 1, 'Opening study…');
  const series = await state.client.series(study);
  if (!series.length) {
    showError('notfound');
    return;
  }
  // the first series with images: metadata and the derivative probe while Cornerstone loads
  const first = firstWithImages(series);
  first.then((found) => {
    removePlaceholder();
    if (found) showPlaceholder(found.series, found.info);
  }).catch(() => {});
  if (!state.stage) {
    const { Stage, Enums, eventTarget } = await loadStage();
    state.Enums = Enums;
    state.eventTarget = eventTarget;
    const stage = new Stage($('viewport'), withCurrentToken);
    await stage.init();
    state.stage = stage;
    bindControls(stage);
  }
  renderSeriesList(series);
  const found = await first;
  if (!found) {
    showError('noimages');
    return;
  }
  await openSeries(found.series, found.info);
  $('viewport').focus({ preventScroll: true });
}

main().catch(fail);
