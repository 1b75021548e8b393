// What the user sees when the link or the gateway fails: a plain sentence and what to do, never a stack trace.
import { GatewayError } from './dicomweb.js';
import { lapsed } from './session.js';

const MESSAGES = {
  expired: ['This link has expired', 'Study links are valid for a limited time. Open the study again from your portal to get a new link.'],
  // the token expired before its session's end: the page was stopped (screen locked, app in the background) or offline
  // past its renewal; data-kind "expired", as the remedy is the same
  lapsed: ['The link ran out before it could be renewed', 'The viewer renews its link while it is open, but could not while the screen was locked, the app was in the background or the network was away. Open the study again from your portal.'],
  revoked: ['This link is no longer valid', 'Access through this link was withdrawn or the link is damaged. Open the study again from your portal.'],
  // no credential at all: the token is scrubbed from the address bar, so a reload (or a copied URL) arrives without it
  missing: ['Open the study again from your portal', 'For privacy this page does not keep its link, so a reloaded or copied page cannot show the study.'],
  forbidden: ['This link does not cover this study', 'The link you used does not give access to these images. Open the study again from your portal.'],
  notfound: ['Study not found', 'The study in this link is not on the server (any more).'],
  unavailable: ['The image server is not reachable', 'The server is down or restarting. Try again in a minute.'],
  // the link works but the images cannot be decoded or served to the browser (not the gateway being down)
  // the study holds no image at all: only reports, documents, key object selections...
  noimages: ['This study has no images to show', 'It holds only reports or documents (such as a structured report or a PDF), which this viewer does not display.'],
  unsupported: ['These images cannot be shown here', 'They are stored in a format this viewer cannot display. A DICOM viewer on a computer may show them.'],
  nolink: ['No study to show', 'Open this viewer through a study link from your portal.'],
  failed: ['The study could not be loaded', 'Something went wrong on the server. Try again later.'],
};

/** Map a failure to one of the kinds above. */
export function classify(error) {
  if (!(error instanceof GatewayError)) return 'failed';
  const codes = `${error.code} ${error.detail}`;
  if (error.status === 401 && codes.includes('token_missing')) return 'missing';
  if (error.status === 401 && codes.includes('expired')) return lapsed() ? 'lapsed' : 'expired';
  if (error.status === 401) return 'revoked';
  if (error.status === 403) return 'forbidden';
  if (error.status === 404) return 'notfound';
  if (error.status === 0 || error.status === 502 || error.status === 503 || error.status === 504) return 'unavailable';
  return 'failed';
}

/** Replace the viewer with the error screen; `kind` goes to `data-kind` for tests and embedding pages. */
export function showError(kind, status = null, note = '') {
  const [title, text] = MESSAGES[kind] || MESSAGES.failed;
  const screen = document.getElementById('error');
  document.getElementById('error-title').textContent = title;
  document.getElementById('error-text').textContent = text + (status ? ` (HTTP ${status})` : '') + (note ? ` ${note}` : '');
  screen.dataset.kind = kind === 'lapsed' ? 'expired' : kind;
  screen.hidden = false;
  document.getElementById('app').hidden = true;
  document.title = `${title} · DICOM viewer`;
  tellPortal(screen.dataset.kind);
}

/**
 * Tell the page that embeds the viewer which screen is up (`kind`, null: the images again). A portal frames it from
 * another origin, so it can read nothing of this page (`data-kind` is for same-origin pages and tests): the HTML
 * standard's way across origins is a message. It names the screen only (no study, no token, no patient), so any
 * parent may read it; and only the origins of CSP frame-ancestors can be that parent.
 */
function tellPortal(kind) {
  if (window.parent !== window) window.parent.postMessage({ type: 'dicom-gateway-viewer', error: kind }, '*');
}

/** Back to the viewer: the failure the screen reported has passed (the network or storage answers again). */
export function hideError() {
  const screen = document.getElementById('error');
  const shown = !screen.hidden;
  screen.hidden = true;
  delete screen.dataset.kind;
  document.getElementById('app').hidden = false;
  document.title = 'DICOM viewer';
  if (shown) tellPortal(null);
}
