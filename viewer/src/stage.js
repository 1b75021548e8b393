// The image stage: Cornerstone3D's stack viewport with the DICOM image loader's WADO-RS scheme, and the tools
// bound for mouse, wheel, keyboard and touch.
//
// Bindings (desktop): left drag = window/level, right drag = zoom, middle drag = pan, wheel = stack scroll,
// arrow keys / PageUp / PageDown / Home / End = stack scroll. Touch: one finger = stack scroll, two fingers =
// pinch zoom + pan. Window/level on touch comes from the presets (a one-finger drag is taken by scrolling, which
// clinicians on phones use far more).
import {
  Enums,
  RenderingEngine,
  eventTarget,
  imageLoader,
  init as initCore,
  metaData,
} from '@cornerstonejs/core';
import {
  PanTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as initTools,
  Enums as ToolEnums,
} from '@cornerstonejs/tools';
import { init as initLoader, wadors } from '@cornerstonejs/dicom-image-loader';

const ENGINE = 'dgw-engine';
const VIEWPORT = 'dgw-stack';
const TOOLS = 'dgw-tools';

// CT window presets in Hounsfield units: [center, width].
export const PRESETS = {
  soft: [40, 400],
  lung: [-600, 1500],
  bone: [400, 1800],
  brain: [40, 80],
};

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
  }

  async init() {
    initCore();
    initTools();
    // Few decode workers: phones have little memory, and raw CT frames need no decoding at all.
    initLoader({
      maxWebWorkers: Math.min(2, navigator.hardwareConcurrency || 1),
      open: (xhr, url) => xhr.open('get', this.currentUrl(url), true),
    });
    for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) addTool(tool);

    this.engine = new RenderingEngine(ENGINE);
    this.engine.enableElement({
      viewportId: VIEWPORT,
      type: Enums.ViewportType.STACK,
      element: this.element,
      defaultOptions: { background: [0, 0, 0] },
    });
    this.viewport = this.engine.getViewport(VIEWPORT);

    const group = ToolGroupManager.createToolGroup(TOOLS);
    group.addTool(StackScrollTool.toolName, { loop: false });
    group.addTool(ZoomTool.toolName, { pinchToZoom: true, pan: true });
    group.addTool(WindowLevelTool.toolName);
    group.addTool(PanTool.toolName);
    const { MouseBindings } = ToolEnums;
    // Order matters: for a one-finger touch Cornerstone picks the first tool *activated* that is bound to one touch
    // point or to the primary mouse button, so stack scroll must be activated before window/level.
    group.setToolActive(StackScrollTool.toolName, {
      bindings: [{ mouseButton: MouseBindings.Wheel }, { numTouchPoints: 1 }],
    });
    group.setToolActive(ZoomTool.toolName, {
      bindings: [{ mouseButton: MouseBindings.Secondary }, { numTouchPoints: 2 }],
    });
    group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    group.addViewport(VIEWPORT, ENGINE);
    this.element.addEventListener('contextmenu', (e) => e.preventDefault());

    // The stage fills a flex box whose size changes with the phone's rotation and the iframe's size.
    new ResizeObserver(() => {
      this.engine.resize(true, true);
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
      wadors.metaDataManager.add(imageId, instance);
      return imageId;
    });
  }

  /** Show a stack; resolves once the first image is on screen. */
  async show(imageIds, index = 0) {
    this.imageIds = imageIds;
    await this.viewport.setStack(imageIds, index);
    this.viewport.resetCamera();
    this.viewport.render();
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
    this.viewport.resetCamera();
    this.viewport.render();
  }

  /** Load (and cache) images in the background, reporting each result; used for the progress bar. */
  prefetch(imageIds, onDone) {
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
