// Image detail: findings, metadata (never patient identifiers), neighbours, and a link that opens
// Neo4j Browser with the Cypher of this image's neighbourhood.

import { apiFetch, keyScopes, pageConfig } from '../api.js';
import {
  communityChip, emptyPanel, findingList, formatNumber, h, shortKey, thumbnail, withStates,
} from '../dom.js';
import { hashFor } from '../router.js';

// Only these properties are shown. Anything else the API sends (a source path, which for NIH
// files carries the patient number, or the patient key) stays off the page.
const METADATA_FIELDS = [
  ['key', 'Key'],
  ['modality', 'Modality'],
  ['width', 'Width (px)'],
  ['height', 'Height (px)'],
  ['file_bytes', 'File size (bytes)'],
  ['model_version', 'Embedding model'],
  ['ingested_at', 'Ingested'],
  ['neighbours', 'SIMILAR edges'],
  ['degree', 'Weighted degree'],
  ['patient_images', 'Images of this patient'],
];

let root = null;
let body = null;
let controller = null;
let shown = null;

function cypherString(text) {
  return `'${String(text).replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

// Display text for Neo4j Browser only; the server never runs it.
export function neighbourhoodCypher(key) {
  return [
    `MATCH (focus:Image {key: ${cypherString(key)}})-[similar:SIMILAR]-(neighbour:Image)`,
    'RETURN focus, similar, neighbour',
    'ORDER BY similar.weight DESC',
  ].join('\n');
}

export function neo4jBrowserLink(key) {
  const url = new URL(pageConfig.neo4jBrowserUrl, window.location.href);
  url.searchParams.set('cmd', 'edit');
  url.searchParams.set('arg', neighbourhoodCypher(key));
  return url.toString();
}

function metadataTable(image) {
  return h('dl', { class: 'metadata', id: 'image-metadata' },
    METADATA_FIELDS.filter(([name]) => image[name] !== undefined && image[name] !== null)
      .map(([name, label]) => [
        h('dt', {}, label),
        h('dd', { class: name === 'key' ? 'mono break' : '' },
          typeof image[name] === 'number' && !Number.isInteger(image[name])
            ? formatNumber(image[name]) : String(image[name])),
      ]),
    h('dt', {}, 'Community'), h('dd', {}, communityChip(image.community)));
}

function neighboursOf(payload, key) {
  const elements = payload.elements || payload;
  const unwrap = (element) => element.data || element;
  const nodes = new Map((elements.nodes || []).map(unwrap).map((node) => [node.id, node]));
  return (elements.edges || []).map(unwrap)
    .filter((edge) => edge.source === key || edge.target === key)
    .map((edge) => {
      const other = edge.source === key ? edge.target : edge.source;
      return { ...nodes.get(other), key: other, weight: Number(edge.weight) };
    })
    .sort((a, b) => b.weight - a.weight);
}

function renderNeighbours(target, payload, key) {
  const neighbours = neighboursOf(payload, key);
  if (!neighbours.length) {
    target.append(emptyPanel('This image has no SIMILAR edges.'));
    return;
  }
  target.append(h('ol', { class: 'neighbour-list', id: 'image-neighbours' },
    neighbours.map((neighbour) => h('li', { dataset: { key: neighbour.key } },
      h('a', { href: hashFor('image', [neighbour.key]) },
        thumbnail(neighbour.key, { url: neighbour.thumbnail_url, size: 'sm' })),
      h('div', {},
        h('div', { class: 'card-row' },
          h('span', { class: 'cosine' }, `cos ${formatNumber(neighbour.weight)}`),
          communityChip(neighbour.community)),
        findingList(neighbour.findings))))));
}

// Deleting is offered only to a write key, and only after a second, explicit confirmation.
function deletePanel(key) {
  const panel = h('div', { class: 'delete-image', id: 'image-delete', hidden: true });
  const status = h('p', { class: 'delete-status', id: 'image-delete-status', role: 'status' });
  const confirmBox = h('div', { class: 'delete-confirm', id: 'image-delete-confirm', hidden: true },
    h('p', {}, 'Delete this image from the archive? Its node and SIMILAR edges go, its '
      + 'neighbours are re-linked and its community is updated. This cannot be undone.'),
    h('button', {
      type: 'button', class: 'button danger', id: 'image-delete-confirm-button',
      onclick: async (event) => {
        event.target.disabled = true;
        status.textContent = 'Deleting…';
        try {
          const result = await apiFetch(`/images/${encodeURIComponent(key)}`, { method: 'DELETE' });
          confirmBox.hidden = true;
          start.hidden = true;
          status.textContent = `Deleted. ${result.files}. Audit record ${result.audit_id}.`;
          if (root) root.dataset.deleted = key;
        } catch (error) {
          event.target.disabled = false;
          status.textContent = `Not deleted: ${error.message}`;
        }
      },
    }, 'Delete permanently'),
    ' ',
    h('button', {
      type: 'button', id: 'image-delete-cancel',
      onclick: () => { confirmBox.hidden = true; start.hidden = false; },
    }, 'Cancel'));
  const start = h('button', {
    type: 'button', class: 'button danger', id: 'image-delete-button',
    onclick: () => { confirmBox.hidden = false; start.hidden = true; },
  }, 'Delete image…');
  panel.append(start, confirmBox, status);
  keyScopes().then((scopes) => {
    panel.hidden = !scopes.includes('write');
    if (root) root.dataset.canDelete = String(!panel.hidden);
  });
  return panel;
}

function renderImage(image, key, signal) {
  const cypher = neighbourhoodCypher(key);
  const neighbours = h('div', { id: 'image-neighbours-body' });
  body.append(h('div', { class: 'image-layout' },
    h('section', { class: 'panel image-main' },
      thumbnail(key, { url: image.thumbnail_url, size: 'xl' }),
      h('h2', {}, 'Findings'), findingList(image.findings),
      h('h2', {}, 'Metadata'), metadataTable(image),
      h('p', { class: 'links' },
        h('a', { href: hashFor('search', [], { key }) }, 'Search similar'), ' · ',
        h('a', { href: hashFor('graph', [], { key }) }, 'Neighbourhood graph')),
      deletePanel(key)),
    h('section', { class: 'panel image-neighbours' },
      h('h2', {}, 'Neighbours (SIMILAR edges)'), neighbours),
    h('section', { class: 'panel image-cypher' },
      h('h2', {}, 'In Neo4j Browser'),
      h('p', {}, h('a', {
        href: neo4jBrowserLink(key), target: '_blank', rel: 'noopener', id: 'neo4j-browser-link',
        class: 'button',
      }, 'Open this neighbourhood in Neo4j Browser ↗')),
      h('pre', { class: 'cypher', id: 'image-cypher' }, cypher),
      h('button', {
        type: 'button',
        onclick: (event) => navigator.clipboard?.writeText(cypher)
          .then(() => { event.target.textContent = 'Copied'; })
          .catch(() => { event.target.textContent = 'Copy failed'; }),
      }, 'Copy Cypher'))));
  return withStates(neighbours,
    () => apiFetch(`/images/${encodeURIComponent(key)}/neighbourhood`,
      { params: { hops: 1 }, signal }),
    (payload) => renderNeighbours(neighbours, payload, key),
    { loadingMessage: 'Loading neighbours…' });
}

function load(key) {
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  shown = key;
  root.querySelector('h1').textContent = `Image ${shortKey(key)}`;
  root.querySelector('h1').title = key;
  withStates(body, () => apiFetch(`/images/${encodeURIComponent(key)}`, { signal }),
    (image) => renderImage(image, key, signal), {
      loadingMessage: 'Loading the image…',
      onStatus: (status) => { if (root) root.dataset.status = status; },
    });
}

export const imageView = {
  mount(container, route) {
    root = container;
    body = h('div', { id: 'image-body' });
    container.append(h('section', { class: 'panel' }, h('h1', {}, 'Image')), body);
    shown = null;
    this.update(route);
  },
  update(route, { force = false } = {}) {
    const key = route.args[0];
    if (!key) {
      body.replaceChildren(emptyPanel('Open an image from a search result, a graph or a community.'));
      return;
    }
    if (force || key !== shown) load(key);
  },
  unmount() {
    controller?.abort();
    root = null;
  },
};
