// Every call the page makes to the medgraph REST API goes through here, so the API key, error
// messages and image loading are handled in one place.

const config = JSON.parse(document.getElementById('medgraph-config').textContent);
export const pageConfig = config;

const API_KEY_STORAGE = 'medgraph.apiKey';

export function getApiKey() {
  return sessionStorage.getItem(API_KEY_STORAGE) || '';
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
  else sessionStorage.removeItem(API_KEY_STORAGE);
  // Images fetched with the old key may not be readable with the new one.
  clearImageCache();
  scopesFor = null;
}

// What the current key may do (GET /auth/key), asked once per key. No key, or a key the server
// refuses: no scope, so nothing that needs one is shown.
let scopesFor = null;
export function keyScopes() {
  const key = getApiKey();
  if (!scopesFor || scopesFor.key !== key) {
    const promise = key
      ? apiFetch('/auth/key').then((payload) => payload.scopes || []).catch(() => [])
      : Promise.resolve([]);
    scopesFor = { key, promise };
  }
  return scopesFor.promise;
}

export class ApiError extends Error {
  constructor(status, message, payload) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.payload = payload;
  }
}

function authHeaders() {
  const key = getApiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export function apiUrl(path, params) {
  const url = new URL(path.startsWith('/') && !path.startsWith(config.apiBase)
    ? config.apiBase + path
    : path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, value);
  }
  return url;
}

function messageOf(payload, response) {
  if (payload && typeof payload === 'object') {
    const error = payload.error ?? payload.detail ?? payload.message;
    if (typeof error === 'string') return error;
    if (error && typeof error === 'object') {
      return error.message || error.detail || JSON.stringify(error);
    }
  }
  if (typeof payload === 'string' && payload.trim()) return payload.trim().slice(0, 300);
  return `${response.status} ${response.statusText || 'error'}`;
}

// A rate-limited request (429) is sent again after the server's Retry-After, a few times: a
// graph view fetches one thumbnail per node, which can exceed a per-key rate limit briefly.
const RATE_LIMIT_RETRIES = 4;

function pause(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new DOMException('aborted', 'AbortError'));
    }, { once: true });
  });
}

async function fetchWithRetry(url, init) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(url, init);
    if (response.status !== 429 || attempt >= RATE_LIMIT_RETRIES) return response;
    const wait = Number.parseFloat(response.headers.get('Retry-After') || '1');
    await pause(Math.min(Number.isFinite(wait) ? wait : 1, 10) * (attempt + 1), init.signal);
  }
}

// `path` is relative to the API base (`/search`) or an absolute API path (`/api/v1/...`).
export async function apiFetch(path, { method = 'GET', params, body, signal } = {}) {
  let response;
  try {
    response = await fetchWithRetry(apiUrl(path, params), {
      method,
      body,
      signal,
      headers: { Accept: 'application/json', ...authHeaders() },
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, `The API cannot be reached (${error.message}).`, null);
  }
  const text = await response.text();
  let payload = text;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a proxy's error page, say): keep the text for the message.
  }
  if (!response.ok) {
    let message = messageOf(payload, response);
    if (response.status === 401 || response.status === 403) {
      message += ' — enter an API key with the needed scope (top right).';
    }
    throw new ApiError(response.status, message, payload);
  }
  return payload;
}

export function thumbnailPath(key) {
  return `${config.apiBase}/images/${encodeURIComponent(key)}/thumbnail`;
}

// Images are fetched (not put in <img src> directly) so that the Authorization header goes with
// them; each URL is fetched once per API key and kept as an object URL.
const imageCache = new Map();

function clearImageCache() {
  for (const promise of imageCache.values()) {
    promise.then((objectUrl) => objectUrl && URL.revokeObjectURL(objectUrl)).catch(() => {});
  }
  imageCache.clear();
}

export function loadImage(url) {
  if (!imageCache.has(url)) {
    const promise = fetchWithRetry(apiUrl(url), { headers: authHeaders() }).then(async (response) => {
      if (!response.ok) throw new ApiError(response.status, `image ${response.status}`, null);
      return URL.createObjectURL(await response.blob());
    });
    // A failed image may succeed later (after a key is entered): do not cache failures.
    promise.catch(() => imageCache.delete(url));
    imageCache.set(url, promise);
  }
  return imageCache.get(url);
}
