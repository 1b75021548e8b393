// The interaction tools, bound for mouse, wheel, keyboard and touch: a module of its own, loaded after the first
// image is on screen (Cornerstone's tools are a large part of the bundle and nothing needs them before then).
//
// Bindings (desktop): left drag = window/level, right drag = zoom, middle drag = pan, wheel = stack scroll,
// arrow keys / PageUp / PageDown / Home / End = stack scroll. Touch: one finger = stack scroll, two fingers =
// pinch zoom + pan. Window/level on touch comes from the presets (a one-finger drag is taken by scrolling, which
// clinicians on phones use far more).
import {
  PanTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
  addTool,
  init as initTools,
  store,
  Enums as ToolEnums,
} from '@cornerstonejs/tools';

const TOOLS = 'dgw-tools';

export function bindTools(element, engineId, viewportId) {
  initTools();
  // The viewport was enabled before the tools were loaded: give them the element as if they had seen it enabled.
  store.addEnabledElement({ detail: { element, viewportId, renderingEngineId: engineId } });
  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) addTool(tool);
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
  group.addViewport(viewportId, engineId);
}
