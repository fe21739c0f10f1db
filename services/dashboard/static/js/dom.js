// Small DOM helpers shared by the views: element building, thumbnails, colours, states.

import { loadImage, thumbnailPath } from './api.js';

export const NO_FINDING = 'No Finding';

// h('div', {class: 'x', onclick: fn}, child, 'text', [more children])
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'text') {
      element.textContent = value;
    } else {
      element.setAttribute(name, value === true ? '' : value);
    }
  }
  appendChildren(element, children);
  return element;
}

function appendChildren(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) appendChildren(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  appendChildren(element, children);
  return element;
}

// Community colours: golden-angle hues, so neighbouring ids get clearly different colours.
export function communityColour(community) {
  if (community === null || community === undefined || community === '') return '#9aa3ad';
  const id = Number(community);
  const hue = Number.isFinite(id) ? (id * 137.508 + 200) % 360 : 0;
  const lightness = Number.isFinite(id) ? 42 + (Math.abs(id) % 3) * 8 : 45;
  return `hsl(${hue.toFixed(1)}, 68%, ${lightness}%)`;
}

export function communityChip(community, { link = true } = {}) {
  const label = community === null || community === undefined ? 'none' : `C${community}`;
  const attrs = {
    class: 'community-chip',
    style: `--community: ${communityColour(community)}`,
    title: `community ${label}`,
  };
  if (link && community !== null && community !== undefined) {
    return h('a', { ...attrs, href: `#/communities/${encodeURIComponent(community)}` }, label);
  }
  return h('span', attrs, label);
}

export function findingList(findings, { highlight = null } = {}) {
  const list = findings && findings.length ? findings : [NO_FINDING];
  return h('ul', { class: 'findings' }, list.map((finding) => h('li', {
    class: [
      finding === NO_FINDING ? 'finding-none' : 'finding',
      highlight && highlight.has(finding) ? 'shared' : '',
    ].join(' ').trim(),
    title: highlight && highlight.has(finding) ? 'also a finding of the query' : null,
  }, finding)));
}

export function thumbnail(key, { url = null, size = 'md', alt = null } = {}) {
  // No alt text until the pixels arrive, so a loading tile shows no text.
  const image = h('img', {
    class: `thumb thumb-${size}`,
    alt: '',
    dataset: { key, state: 'loading' },
    decoding: 'async',
  });
  loadImage(url || thumbnailPath(key)).then((objectUrl) => {
    image.src = objectUrl;
    image.alt = alt || `chest X-ray ${shortKey(key)}`;
    image.dataset.state = 'loaded';
  }).catch(() => {
    image.dataset.state = 'error';
    image.alt = 'thumbnail unavailable';
  });
  return image;
}

export function shortKey(key) {
  return key ? String(key).slice(0, 12) : '';
}

export function formatNumber(value, digits = 3) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '—';
}

export function loadingPanel(message = 'Loading…') {
  return h('div', { class: 'state state-loading', role: 'status', 'aria-live': 'polite' },
    h('span', { class: 'spinner', 'aria-hidden': 'true' }), message);
}

export function errorPanel(error, retry = null) {
  return h('div', { class: 'state state-error', role: 'alert' },
    h('strong', {}, error && error.status ? `Error ${error.status}` : 'Error'),
    h('span', { class: 'error-message' }, error ? error.message || String(error) : 'unknown error'),
    retry ? h('button', { type: 'button', onclick: retry }, 'Retry') : null);
}

export function emptyPanel(message) {
  return h('div', { class: 'state state-empty' }, message);
}

// Shows loading, then either fills `target` from `build(result)` or shows the error.
// Returns the result, or undefined when the work failed or was superseded (aborted).
export async function withStates(target, work, build, { loadingMessage, onStatus } = {}) {
  target.replaceChildren(loadingPanel(loadingMessage));
  target.dataset.status = 'loading';
  onStatus?.('loading');
  try {
    const result = await work();
    target.replaceChildren();
    // build may return a promise for parts that load on their own (samples, neighbours): the
    // status turns 'ready' once they have settled too.
    await build(result);
    target.dataset.status = 'ready';
    onStatus?.('ready');
    return result;
  } catch (error) {
    if (error.name === 'AbortError') return undefined;
    console.error(error);
    target.replaceChildren(errorPanel(error, () => withStates(target, work, build,
      { loadingMessage, onStatus })));
    target.dataset.status = 'error';
    onStatus?.('error', error);
    return undefined;
  }
}
