// Long viewing sessions: a token issued with `session_max` is renewed before it expires, without the portal and
// without a reload, until the session's end (or its revocation), then the error screen says why.
//
// The exchange is a POST with the current token in the JSON body and the new one in the answer: never in a URL.
// The new token replaces the old one in memory only; every later request uses it: the DICOMweb client's root, and
// the image loader's requests (`withCurrentToken` rewrites the `/t/{token}/` prefix of a frame URL registered
// earlier, so Cornerstone's image ids, and its cache, stay as they are). In the cookie flow (a mobile WebView that
// opened /api/v1/session) the page holds no token: it posts `{}`, and the gateway renews the HttpOnly cookie itself.
import { GatewayError } from './dicomweb.js';

export const credential = { token: null };

const RETRY_SECONDS = 5; // a network blip: try again soon, the current token still has time

/** A same-origin DICOMweb URL with the current token in its `/t/{token}/` prefix. */
export function withCurrentToken(url) {
  if (!credential.token) return url;
  return url.replace(/\/t\/[^/?#]+\/dicomweb\//, `/t/${credential.token}/dicomweb/`);
}

async function renewOnce() {
  let response;
  try {
    response = await fetch('/api/v1/tokens/renew', {
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
  const step = async () => {
    const result = await renewOnce();
    if (result.done) return;
    if (result.error) {
      onEnd(result.error);
      return;
    }
    if (result.retry) {
      setTimeout(step, result.retry * 1000);
      return;
    }
    const { token, expires_in: expiresIn, session_expires_in: sessionLeft } = result.body;
    if (token) {
      credential.token = token; // the cookie flow gets none: the gateway renewed the cookie
      onRenewed(token);
    }
    const wait = expiresIn >= sessionLeft ? expiresIn + 1 : Math.max(1, expiresIn / 2);
    setTimeout(step, wait * 1000);
  };
  step();
}
