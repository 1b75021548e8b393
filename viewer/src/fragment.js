// Reads the study and token from the URL fragment, then removes the token from the visible URL.
//
// The fragment never leaves the browser, so the page load sends the token to no server log. After reading it we
// keep the token in memory only: it is scrubbed from the address bar and from history (replaceState), so a
// screenshot, a copied URL or a reload does not carry it. `#study=UID` stays, so a reload in the WebView cookie
// flow (no token in the fragment at all) still opens the same study.

const UID = /^[0-9]+(\.[0-9]+)*$/;
// Tokens are URL-safe (itsdangerous: base64url and dots); anything else is a broken link, not something to send.
const TOKEN = /^[A-Za-z0-9._-]{1,4096}$/;

/**
 * @typedef {{study: string|null, token: string|null, problem: string|null}} LinkParts
 * `problem` names what is wrong with the link ("no_study", "bad_study", "bad_token"), or is null.
 */

/** Parse `#study=UID&token=T` (either order, both optional). Pure: no side effects. @returns {LinkParts} */
export function parseFragment(hash) {
  const params = new URLSearchParams((hash || '').replace(/^#/, ''));
  const study = params.get('study');
  const token = params.get('token');
  if (!study) return { study: null, token: null, problem: 'no_study' };
  if (study.length > 64 || !UID.test(study)) return { study: null, token: null, problem: 'bad_study' };
  if (token !== null && !TOKEN.test(token)) return { study, token: null, problem: 'bad_token' };
  return { study, token, problem: null };
}

/** Read the fragment of `win.location` and scrub the token from the address bar. @returns {LinkParts} */
export function takeLinkFromLocation(win = window) {
  const parts = parseFragment(win.location.hash);
  const keep = parts.study ? `#study=${parts.study}` : '';
  if (win.location.hash !== keep) {
    win.history.replaceState(null, '', win.location.pathname + win.location.search + keep);
  }
  return parts;
}

/**
 * The gateway's `path` under the prefix this page was served at: behind a proxy that publishes the gateway at
 * `https://portal.example/pacs/` (DICOMGW_PUBLIC_URL with a path) the page is `/pacs/viewer/`, and `/t/...` or
 * `/api/v1/...` at the host's root is another site's. Pure. @returns {string}
 */
export function gatewayPath(path, pagePath = window.location.pathname) {
  const at = pagePath.lastIndexOf('/viewer/');
  return (at > 0 ? pagePath.slice(0, at) : '') + path;
}

/** The DICOMweb root for a token (path prefix form, so the URLs the gateway returns keep it) or the cookie root. */
export function dicomwebRoot(token, pagePath = window.location.pathname) {
  return gatewayPath(token ? `/t/${token}/dicomweb` : '/dicomweb', pagePath);
}
