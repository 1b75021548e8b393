// The image stage: Cornerstone3D's stack viewport with the DICOM image loader's WADO-RS scheme; progressive
// loading of the gateway's lossless HTJ2K derivative where it exists. The interaction tools (tools.js) load after the
// first image.
import {
  Enums,
  ProgressiveRetrieveImages,
  RenderingEngine,
  eventTarget,
  getWebWorkerManager,
  imageLoader,
  init as initCore,
  metaData,
  utilities,
} from '@cornerstonejs/core';
import { init as initLoader, wadors } from '@cornerstonejs/dicom-image-loader';
import { ACCEPT_EITHER } from './dicomweb.js';
import { UnshowableImage, prepareFrame } from './frames.js';

// Preview from the first bytes of each codestream (its low resolutions), then the rest of the same object.
const PREVIEW_BYTES = 65536;
const PROGRESSIVE = {
  stages: [
    { id: 'preview', retrieveType: 'preview' },
    { id: 'final', retrieveType: 'final' },
  ],
  retrieveOptions: {
    preview: { urlArguments: ACCEPT_EITHER, rangeIndex: 0, initialChunkSize: PREVIEW_BYTES, chunkSize: PREVIEW_BYTES },
    final: { urlArguments: ACCEPT_EITHER, rangeIndex: -1 },
  },
};
const { FULL_RESOLUTION } = Enums.ImageQualityStatus;
const { imageRetrieveMetadataProvider } = utilities;

const ENGINE = 'dgw-engine';
const VIEWPORT = 'dgw-stack';

// CT window presets in Hounsfield units: [center, width].
export const PRESETS = {
  soft: [40, 400],
  lung: [-600, 1500],
  bone: [400, 1800],
  brain: [40, 80],
};

const WINDOW_CENTER = '00281050';
const WINDOW_WIDTH = '00281051';
const VOI_LUT_FUNCTION = '00281056';
// PS3.3 C.11.2.1.3: the VOI LUT Functions defined; an absent or other one is LINEAR.
const VOI_FUNCTIONS = new Set(['LINEAR', 'LINEAR_EXACT', 'SIGMOID']);

/**
 * The file's windows (Window Center and Width, paired by position) that can be used: both values numbers and the
 * width at least 1 (PS3.3 C.11.2.1.2.1). The loader reads them with parseFloat and takes the first pair as it is: an
 * empty first value (`"\\40"`, JSON null), a DS no number holds (1e400, NaN: its text, or null before) drew a red
 * stage with "W NaN L NaN", a width of 0 or less a thresholded or inverted picture. Null when none is usable: the
 * loader then windows the image over its own range, as it does for a file without a window.
 */
function usableWindows(instance) {
  const centers = instance[WINDOW_CENTER]?.Value || [];
  const widths = instance[WINDOW_WIDTH]?.Value || [];
  const pairs = [];
  for (let i = 0; i < Math.min(centers.length, widths.length); i += 1) {
    const [center, width] = [centers[i], widths[i]].map((v) => (v === null || v === '' ? NaN : Number(v)));
    if (Number.isFinite(center) && Number.isFinite(width) && width >= 1) pairs.push([center, width]);
  }
  return pairs.length ? pairs : null;
}

/**
 * The instance's metadata as the image loader can take it (the instance's own metadata, for the series list and
 * the overlay, is left as the gateway sent it):
 * - Its metadata provider reads Modality without a guard (every image's plane module asks whether it is NM): an
 *   instance without it, which real secondary captures are (Modality is Type 1, yet often missing), threw on every
 *   image and the viewer never left "loading". An empty value stands in.
 * - Only the windows it can use (usableWindows); none at all when it has none.
 */
function forLoader(instance) {
  const fixed = { ...instance };
  if (!instance['00080060']?.Value?.length) fixed['00080060'] = { vr: 'CS', Value: [''] };
  if (instance[WINDOW_CENTER] || instance[WINDOW_WIDTH]) {
    const windows = usableWindows(instance);
    delete fixed[WINDOW_CENTER];
    delete fixed[WINDOW_WIDTH];
    if (windows) {
      fixed[WINDOW_CENTER] = { vr: 'DS', Value: windows.map(([center]) => center) };
      fixed[WINDOW_WIDTH] = { vr: 'DS', Value: windows.map(([, width]) => width) };
    }
  }
  // VOI LUT Function: the image loader takes the element's first value and then its first item (`value[0]`), which
  // of a string is its first letter: "SIGMOID" or "LINEAR_EXACT" became "S" or "L", which Cornerstone refused with
  // an error on every draw (the slice's "This image cannot be shown." cover). The name is given as that one item;
  // one that is no defined function is left out (LINEAR).
  if (instance[VOI_LUT_FUNCTION]) {
    const name = String(instance[VOI_LUT_FUNCTION].Value?.[0] ?? '').trim();
    delete fixed[VOI_LUT_FUNCTION];
    if (VOI_FUNCTIONS.has(name)) fixed[VOI_LUT_FUNCTION] = { vr: 'CS', Value: [[name]] };
  }
  return fixed;
}

export class Stage {
  /**
   * @param {HTMLElement} element
   * @param {(url: string) => string} currentUrl the URL to fetch for a registered frame URL (a renewed token)
   */
  constructor(element, currentUrl = (url) => url) {
    this.element = element;
    this.currentUrl = currentUrl;
    this.imageIds = [];
    this.engine = null;
    this.viewport = null;
    this.requests = new WeakMap(); // the image loader's XHR -> the frame URL it was opened for
  }

  async init() {
    // A frame its codec cannot decode (a damaged JPEG) rejects promises inside Cornerstone that nothing there
    // handles, with the decoder's exception, a bare number: the page had an unhandled error ("Uncaught (in promise)
    // 88496") for a portal's error monitoring, while the slice already has its cover (main.js, noteFrame). Those
    // are handled here; any other rejection stays unhandled, as it should.
    window.addEventListener('unhandledrejection', (event) => {
      if (typeof event.reason !== 'number') return;
      event.preventDefault();
      console.warn('viewer: image not decoded');
    });
    initCore();
    // Few decode workers: phones have little memory, and raw CT frames need no decoding at all.
    initLoader({
      maxWebWorkers: Math.min(2, navigator.hardwareConcurrency || 1),
      // a renewed token replaces the one in frame URLs registered earlier (session.js)
      open: (xhr, url) => {
        this.requests.set(xhr, url);
        xhr.open('get', this.currentUrl(url), true);
      },
      // frames Cornerstone would draw wrongly are fixed or refused before it decodes them (frames.js)
      beforeProcessing: async (xhr) => {
        const instance = wadors.metaDataManager.get(`wadors:${(this.requests.get(xhr) || '').split('?')[0]}`);
        if (!instance) return xhr.response;
        try {
          return prepareFrame(instance, xhr.response, xhr.getResponseHeader('Content-Type') || '');
        } catch (error) {
          // a fixed phrase, never the URL (it carries the token)
          if (error instanceof UnshowableImage) console.warn('viewer: image not shown:', error.reason);
          throw error;
        }
      },
    });
    this.engine = new RenderingEngine(ENGINE);
    this.engine.enableElement({
      viewportId: VIEWPORT,
      type: Enums.ViewportType.STACK,
      element: this.element,
      defaultOptions: { background: [0, 0, 0] },
    });
    this.viewport = this.engine.getViewport(VIEWPORT);
    this.hideLayers();
    this.element.addEventListener('contextmenu', (e) => e.preventDefault());
    // Keyboard users: Cornerstone makes the viewport unreachable by Tab (tabindex -1, where the page has 0), and its
    // tools take every key pressed on it (preventDefault), Tab too: a keyboard user was held on the image (the
    // viewer focuses it at open), never reaching the series or the buttons, or the portal around the iframe. The
    // image is in the Tab order again, and Tab goes on as it does everywhere (a capture listener runs before the
    // tools' one).
    this.element.tabIndex = 0;
    this.element.addEventListener(
      'keydown',
      (event) => {
        if (event.key === 'Tab') event.stopImmediatePropagation();
      },
      { capture: true },
    );

    // The stage fills a flex box whose size changes with the phone's rotation and the iframe's size. The image is
    // fitted to the new size unless the user zoomed or panned it (theirs is kept): keeping the camera of a portrait
    // phone turned to landscape left the image ~69% of the stage's height until Reset.
    new ResizeObserver(() => {
      const fitted = this.isFitted();
      this.engine.resize(true, true);
      if (fitted) this.fit();
    }).observe(this.element);
  }

  /**
   * Register one series' metadata with the loader and return its image ids (one per frame).
   * @param {{instance: object, sop: string, frame: number}[]} frames
   * @param {(sop: string, frame: number) => string} frameUrl
   */
  register(frames, frameUrl) {
    return frames.map(({ instance, sop, frame }) => {
      const imageId = `wadors:${frameUrl(sop, frame)}`;
      wadors.metaDataManager.add(imageId, forLoader(instance));
      return imageId;
    });
  }

  /** The viewport is one named image (role img, named by main.js): Cornerstone's canvas and SVG layer are no
   * others to a screen reader. */
  hideLayers() {
    for (const layer of this.element.children) layer.setAttribute('aria-hidden', 'true');
  }

  /** Bind the interaction tools; loaded after the first image, so they cost nothing before it. */
  async bindTools() {
    const { bindTools } = await import('./tools.js');
    bindTools(this.element, ENGINE, VIEWPORT);
  }

  /**
   * Show a stack; resolves once the image is on screen at full quality. ``onFirstRender`` runs when the first
   * picture is drawn (a preview, when progressive).
   */
  async show(imageIds, index = 0, progressive = false, onFirstRender = () => {}) {
    this.imageIds = imageIds;
    const rendered = () => {
      this.element.removeEventListener(Enums.Events.STACK_NEW_IMAGE, rendered);
      onFirstRender();
    };
    this.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, rendered);
    this.progressive = progressive;
    imageRetrieveMetadataProvider.clear();
    if (progressive) imageRetrieveMetadataProvider.add('stack', { ...PROGRESSIVE });
    await this.viewport.setStack(imageIds, index);
    this.fit();
    this.hideLayers();
  }

  /** Fit the image to the stage (zoom and pan reset) and remember that camera as the fitted one. */
  fit() {
    this.viewport.resetCamera();
    this.viewport.render();
    this.fitted = this.camera();
  }

  camera() {
    const { parallelScale, focalPoint, position } = this.viewport.getCamera();
    return JSON.stringify([parallelScale, focalPoint, position]);
  }

  /** Whether the image is as fitted last (not zoomed or panned by the user since). */
  isFitted() {
    return Boolean(this.viewport && this.fitted && this.hasImage() && this.camera() === this.fitted);
  }

  get index() {
    return this.viewport ? this.viewport.getCurrentImageIdIndex() : 0;
  }

  async go(index) {
    const target = Math.max(0, Math.min(this.imageIds.length - 1, index));
    if (target !== this.index) await this.viewport.setImageIdIndex(target);
  }

  scroll(delta) {
    return this.go(this.index + delta);
  }

  /**
   * Start the decode workers afresh: they are created when the loader starts, and one whose script the network
   * failed to bring never answers (every decode waits for good). New ones are made on the next decode.
   */
  restartWorkers() {
    getWebWorkerManager().terminate('dicomImageLoader');
  }

  /** Draw the current image again once it is loadable (its first load failed: nothing is on screen). */
  async redraw() {
    this.engine.resize(true, false); // the stage may have just come back from behind the error screen
    await this.viewport.setStack(this.imageIds, this.index);
    this.fit();
  }

  /** Whether an image of the current stack is on screen (a failed first image leaves none). */
  hasImage() {
    const image = this.viewport?.csImage;
    return Boolean(image && this.imageIds.includes(image.imageId));
  }

  isColor() {
    const meta = this.imageIds.length ? metaData.get('imagePixelModule', this.imageIds[this.index]) : null;
    return Boolean(meta && meta.samplesPerPixel > 1);
  }

  setPreset(name) {
    const [center, width] = PRESETS[name];
    this.viewport.setProperties({ voiRange: { lower: center - width / 2, upper: center + width / 2 } });
    this.viewport.render();
  }

  voi() {
    const range = this.viewport.getProperties()?.voiRange;
    if (!range) return null;
    return { center: (range.upper + range.lower) / 2, width: range.upper - range.lower };
  }

  reset() {
    this.viewport.resetProperties();
    this.fit();
  }

  /** Quality of the image on screen: true once it is the full (lossless) image. */
  isFullQuality() {
    const image = this.viewport?.csImage;
    return !image || image.imageQualityStatus === undefined || image.imageQualityStatus >= FULL_RESOLUTION;
  }

  /**
   * Load (and cache) images in the background, reporting each one once at full quality (or failed); used for the
   * progress bar. Progressive: every slice gets its preview first, then its full codestream.
   */
  prefetch(imageIds, onDone) {
    if (this.progressive) {
      const viewport = this.viewport;
      const settled = new Set();
      const listener = {
        successCallback: (imageId, image) => {
          viewport.successCallback(imageId, image); // repaint if it is the slice on screen
          if (image.imageQualityStatus >= FULL_RESOLUTION && !settled.has(imageId)) {
            settled.add(imageId);
            onDone(imageId, null);
          } else if (!settled.has(imageId)) {
            onDone(imageId, null, true);
          }
        },
        errorCallback: (imageId, permanent, error) => {
          if (!permanent || settled.has(imageId)) return;
          settled.add(imageId);
          onDone(imageId, error || new Error('load failed'));
        },
        getLoaderImageOptions: (imageId) => ({
          ...viewport.getLoaderImageOptions(imageId),
          requestType: Enums.RequestType.Prefetch,
        }),
      };
      new ProgressiveRetrieveImages(PROGRESSIVE).loadImages(imageIds, listener);
      return;
    }
    for (const imageId of imageIds) {
      imageLoader
        .loadAndCacheImage(imageId, { priority: 0, requestType: Enums.RequestType.Prefetch })
        .then(
          () => onDone(imageId, null),
          (error) => onDone(imageId, error || new Error('load failed')),
        );
    }
  }

  on(event, handler) {
    this.element.addEventListener(event, handler);
  }
}

export { Enums, eventTarget };
