// Small DOM helpers shared by the views: element building, thumbnails, colours, states.

import { ApiError, loadImage, thumbnailPath } from './api.js';

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
    } else if (name === 'style') {
      // Through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
      element.style.cssText = value;
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
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'style') element.style.cssText = value;
    else element.setAttribute(name, value);
  }
  appendChildren(element, children);
  return element;
}

// Community colours: a categorical palette (Tableau 10 and two more) for the first twelve ids,
// then golden-angle hues, so that neighbouring ids always get clearly different colours.
const COMMUNITY_PALETTE = [
  '#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948',
  '#b07aa1', '#ff9da7', '#9c755f', '#17becf', '#bcbd22', '#7f3c8d',
];
const NO_COMMUNITY_COLOUR = '#9aa3ad';
// Palette entries light enough to need dark text on top.
const LIGHT_COLOURS = new Set(['#edc948', '#ff9da7', '#76b7b2', '#bcbd22', '#17becf']);

export function communityColour(community) {
  if (community === null || community === undefined || community === '') return NO_COMMUNITY_COLOUR;
  const id = Number(community);
  if (!Number.isInteger(id)) return NO_COMMUNITY_COLOUR;
  const slot = ((id % COMMUNITY_PALETTE.length) + COMMUNITY_PALETTE.length) % COMMUNITY_PALETTE.length;
  if (Math.abs(id) < COMMUNITY_PALETTE.length) return COMMUNITY_PALETTE[slot];
  const hue = (id * 137.508 + 20) % 360;
  return `hsl(${hue.toFixed(1)}, 62%, ${38 + (Math.abs(id) % 3) * 7}%)`;
}

export function communityInk(community) {
  return LIGHT_COLOURS.has(communityColour(community)) ? '#1d2733' : '#ffffff';
}

export function communityChip(community, { link = true } = {}) {
  const label = community === null || community === undefined ? 'none' : `C${community}`;
  const attrs = {
    class: 'community-chip',
    style: `--community: ${communityColour(community)}; --community-ink: ${communityInk(community)}`,
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
    // API errors are expected (no key, unknown image) and shown in the panel; log only bugs.
    if (!(error instanceof ApiError)) console.error(error);
    target.replaceChildren(errorPanel(error, () => withStates(target, work, build,
      { loadingMessage, onStatus })));
    target.dataset.status = 'error';
    onStatus?.('error', error);
    return undefined;
  }
}
