// Long viewing sessions: a token issued with `session_max` is renewed before it expires, without the portal and
// without a reload, until the session's end (or its revocation), then the error screen says why.
//
// The exchange is a POST with the current token in the JSON body and the new one in the answer: never in a URL.
// The new token replaces the old one in memory only; every later request uses it: the DICOMweb client's root, and
// the image loader's requests (`withCurrentToken` rewrites the `/t/{token}/` prefix of a frame URL registered
// earlier, so Cornerstone's image ids, and its cache, stay as they are). In the cookie flow (a mobile WebView that
// opened /api/v1/session) the page holds no token: it posts `{}`, and the gateway renews the HttpOnly cookie itself.
//
// A phone that locks its screen or puts the app in the background stops the page (iOS suspends the WebView, Android
// pauses its timers): no renewal runs meanwhile. On resume the page renews at once if its token is still good; if it
// expired meanwhile (the session itself had time left) nothing can renew it, and the viewer says that the link ran
// out before it could be renewed (`lapsed`: stopped, or offline, too long) rather than that the link's time was up.
import { GatewayError } from './dicomweb.js';
import { gatewayPath } from './fragment.js';

// expiresAt / sessionEndsAt: this page's clock (ms) when the current token and its session end, from the last renewal
export const credential = { token: null, expiresAt: null, sessionEndsAt: null };

const RETRY_SECONDS = 5; // a network blip: try again soon, the current token still has time

/** A same-origin DICOMweb URL with the current token in its `/t/{token}/` prefix. */
export function withCurrentToken(url) {
  if (!credential.token) return url;
  return url.replace(/\/t\/[^/?#]+\/dicomweb\//, `/t/${credential.token}/dicomweb/`);
}

async function renewOnce() {
  let response;
  try {
    response = await fetch(gatewayPath('/api/v1/tokens/renew'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      // if_session: a token issued without session_max is a 204 (nothing to renew), not a 400 in the console
      body: JSON.stringify(credential.token ? { token: credential.token, if_session: true } : { if_session: true }),
      credentials: 'same-origin',
      referrerPolicy: 'no-referrer',
      cache: 'no-store',
    });
  } catch {
    return { retry: RETRY_SECONDS };
  }
  // a token without a session lives its own life: 204 (400 from a gateway that predates if_session)
  if (response.status === 204 || response.status === 400) return { done: true };
  let body = {};
  try {
    body = await response.json();
  } catch {
    // NGINX's own pages while the gateway restarts: the status says enough
  }
  if (response.status >= 500) return { retry: RETRY_SECONDS };
  if (!response.ok) return { error: new GatewayError(response.status, String(body.error || ''), String(body.detail || '')) };
  return { body };
}

/**
 * Renew now (to learn the lifetimes), then at half of each new token's lifetime; once a renewal can no longer
 * extend it (the session ends first), once more just after it expires, which the gateway refuses: `onEnd(error)`
 * with the 401 (expired or revoked). `onRenewed(token)` after each renewal.
 */
export function keepRenewing(onRenewed, onEnd) {
  let timer = null;
  let dueAt = Infinity; // when the next renewal is due (this page's clock, ms); Infinity while one runs or none will
  const later = (seconds) => {
    dueAt = Date.now() + seconds * 1000;
    timer = setTimeout(step, seconds * 1000);
  };
  const step = async () => {
    clearTimeout(timer);
    dueAt = Infinity;
    const result = await renewOnce();
    if (result.done) return;
    if (result.error) {
      onEnd(result.error);
      return;
    }
    if (result.retry) {
      later(result.retry);
      return;
    }
    const { token, expires_in: expiresIn, session_expires_in: sessionLeft } = result.body;
    if (token) {
      credential.token = token; // the cookie flow gets none: the gateway renewed the cookie
      onRenewed(token);
    }
    const now = Date.now();
    credential.expiresAt = now + expiresIn * 1000;
    credential.sessionEndsAt = now + sessionLeft * 1000;
    later(expiresIn >= sessionLeft ? expiresIn + 1 : Math.max(1, expiresIn / 2));
  };
  // Back from the background (or the network back): a renewal the paused timers let pass is made now, before the
  // frames the page asks for next meet an expired token.
  const resume = () => {
    if (!document.hidden && Date.now() >= dueAt) step();
  };
  document.addEventListener('visibilitychange', resume);
  window.addEventListener('pageshow', resume);
  window.addEventListener('online', resume);
  step();
}

/** Whether the current token expired before its session's end: the page was stopped (a locked phone, an app in the
 * background) past the moment it had to renew it. */
export function lapsed() {
  const now = Date.now();
  return credential.expiresAt !== null && now >= credential.expiresAt && now < credential.sessionEndsAt;
}
