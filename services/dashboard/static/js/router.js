// View state lives in the URL hash (#/view/arg?name=value), so every view can be linked.

export function parseHash(hash = window.location.hash) {
  const text = hash.replace(/^#\/?/, '');
  const [path, query = ''] = text.split('?', 2);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return {
    view: parts[0] || 'search',
    args: parts.slice(1),
    params: new URLSearchParams(query),
  };
}

export function hashFor(view, args = [], params = {}) {
  const path = [view, ...args.map((arg) => encodeURIComponent(arg))].join('/');
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(name, String(value));
  }
  const queryText = query.toString();
  return `#/${path}${queryText ? `?${queryText}` : ''}`;
}

// replace: true changes the URL without a new history entry (slider drags, defaults filled in).
export function navigate(view, args = [], params = {}, { replace = false } = {}) {
  const hash = hashFor(view, args, params);
  if (hash === window.location.hash) return;
  if (replace) {
    window.history.replaceState(null, '', hash);
    window.dispatchEvent(new HashChangeEvent('hashchange'));
  } else {
    window.location.hash = hash;
  }
}
