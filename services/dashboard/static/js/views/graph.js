// Neighbourhood graph: the focus image and its k-hop neighbourhood, drawn with cytoscape.js.
// Nodes show thumbnails and are coloured by community; edge width follows cosine; clicking a
// node makes it the focus.

import { ApiError, apiFetch, loadImage, thumbnailPath } from '../api.js';
import {
  communityChip, communityColour, emptyPanel, errorPanel, findingList, formatNumber, h,
  loadingPanel, shortKey, thumbnail,
} from '../dom.js';
import { hashFor, navigate } from '../router.js';

const MAX_HOPS = 3;
const DEFAULT_HOPS = 1;
const DEFAULT_MIN_WEIGHT = 0;
const SLIDER_SETTLE_MS = 250;

let root = null;
let cy = null;
let canvas = null;
let overlay = null;
let sidePanel = null;
let controls = null;
let controller = null;
let shownState = '';
let sliderTimer = null;

function readParams(params) {
  const hops = Number.parseInt(params.get('hops') || '', 10);
  const minWeight = Number.parseFloat(params.get('min_weight') || '');
  return {
    key: (params.get('key') || '').trim(),
    hops: Number.isFinite(hops) ? Math.min(Math.max(hops, 1), MAX_HOPS) : DEFAULT_HOPS,
    minWeight: Number.isFinite(minWeight) ? Math.min(Math.max(minWeight, -1), 1)
      : DEFAULT_MIN_WEIGHT,
  };
}

function stateParams(state) {
  return { key: state.key, hops: state.hops, min_weight: state.minWeight.toFixed(2) };
}

function buildControls(state) {
  const keyInput = h('input', {
    id: 'graph-key', type: 'text', value: state.key, placeholder: 'focus image key',
    spellcheck: 'false', autocomplete: 'off',
  });
  const hopsInput = h('input', {
    id: 'graph-hops', type: 'range', min: 1, max: MAX_HOPS, step: 1, value: state.hops,
  });
  const hopsValue = h('output', { id: 'graph-hops-value', for: 'graph-hops' }, state.hops);
  const minInput = h('input', {
    id: 'graph-min-weight', type: 'range', min: 0, max: 1, step: 0.01,
    value: state.minWeight,
  });
  const minValue = h('output', { id: 'graph-min-weight-value', for: 'graph-min-weight' },
    state.minWeight.toFixed(2));
  const element = h('form', { class: 'toolbar graph-controls', id: 'graph-controls' },
    h('div', { class: 'field field-wide' }, h('label', { for: 'graph-key' }, 'Focus image'),
      keyInput),
    h('div', { class: 'field field-slider' },
      h('label', { for: 'graph-hops' }, 'Hops ', hopsValue), hopsInput),
    h('div', { class: 'field field-slider' },
      h('label', { for: 'graph-min-weight' }, 'Min. similarity ', minValue), minInput),
    h('button', { type: 'submit', class: 'primary' }, 'Show'));
  const current = () => ({
    key: keyInput.value.trim(),
    hops: Number(hopsInput.value),
    minWeight: Number(minInput.value),
  });
  const settle = () => {
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(() => {
      const state = current();
      if (state.key) navigate('graph', [], stateParams(state), { replace: true });
    }, SLIDER_SETTLE_MS);
  };
  hopsInput.addEventListener('input', () => { hopsValue.textContent = hopsInput.value; settle(); });
  minInput.addEventListener('input', () => {
    minValue.textContent = Number(minInput.value).toFixed(2);
    settle();
  });
  element.addEventListener('submit', (event) => {
    event.preventDefault();
    const state = current();
    if (state.key) navigate('graph', [], stateParams(state));
    else keyInput.focus();
  });
  return element;
}

function syncControls(state) {
  controls.querySelector('#graph-key').value = state.key;
  controls.querySelector('#graph-hops').value = state.hops;
  controls.querySelector('#graph-hops-value').textContent = state.hops;
  controls.querySelector('#graph-min-weight').value = state.minWeight;
  controls.querySelector('#graph-min-weight-value').textContent = state.minWeight.toFixed(2);
}

function createCy() {
  // The vendored UMD build (static/vendor/cytoscape) defines window.cytoscape.
  const instance = window.cytoscape({
    container: canvas,
    wheelSensitivity: 0.3,
    minZoom: 0.2,
    maxZoom: 4,
    style: [
      {
        selector: 'node',
        style: {
          width: 46,
          height: 46,
          shape: 'round-rectangle',
          'background-color': '#dfe3e8',
          'background-image': (node) => node.data('thumb') || 'none',
          'background-fit': 'cover',
          'background-image-crossorigin': 'null',
          'border-width': 5,
          'border-color': 'data(colour)',
          label: '',
        },
      },
      {
        selector: 'node.focus',
        style: {
          width: 84,
          height: 84,
          'border-width': 7,
          'outline-width': 4,
          'outline-color': '#14202e',
          'outline-offset': 0,
          'z-index': 10,
        },
      },
      {
        selector: 'node.hovered',
        style: { 'overlay-color': '#1a73e8', 'overlay-opacity': 0.18, 'overlay-padding': 4 },
      },
      {
        selector: 'edge',
        style: {
          width: 'data(width)',
          'line-color': '#8794a3',
          opacity: 0.3,
          'curve-style': 'haystack',
        },
      },
      {
        selector: 'edge.from-focus',
        style: { 'line-color': '#2f4a66', opacity: 0.8, 'z-index': 5 },
      },
    ],
  });
  instance.on('tap', 'node', (event) => {
    const key = event.target.id();
    if (key === root?.dataset.focus) return;
    const state = readParams(new URLSearchParams(window.location.hash.split('?')[1] || ''));
    navigate('graph', [], stateParams({ ...state, key }));
  });
  instance.on('mouseover', 'node', (event) => {
    event.target.addClass('hovered');
    canvas.style.cursor = 'pointer';
    showHover(event.target);
  });
  instance.on('mouseout', 'node', (event) => {
    event.target.removeClass('hovered');
    canvas.style.cursor = '';
  });
  return instance;
}

// The API answers with cytoscape-shaped elements: {center, elements: {nodes: [{data}], edges}}.
function normalise(payload, focusKey) {
  const elements = payload.elements || payload;
  const unwrap = (element) => element.data || element;
  const nodes = (elements.nodes || []).map(unwrap).map((node) => ({
    ...node,
    key: node.key ?? node.id,
  }));
  const edges = (elements.edges || []).map(unwrap).map((edge) => ({
    source: edge.source,
    target: edge.target,
    weight: Number(edge.weight ?? 0),
  })).filter((edge) => edge.source && edge.target);
  const focus = payload.center ?? focusKey;
  return { nodes, edges, focus, truncated: Boolean(payload.truncated) };
}

// Hop distance of every node from the focus (the layout's rings).
function hopDistances(focus, edges) {
  const adjacency = new Map();
  for (const { source, target } of edges) {
    if (!adjacency.has(source)) adjacency.set(source, []);
    if (!adjacency.has(target)) adjacency.set(target, []);
    adjacency.get(source).push(target);
    adjacency.get(target).push(source);
  }
  const distance = new Map([[focus, 0]]);
  const queue = [focus];
  while (queue.length) {
    const node = queue.shift();
    for (const next of adjacency.get(node) || []) {
      if (!distance.has(next)) {
        distance.set(next, distance.get(node) + 1);
        queue.push(next);
      }
    }
  }
  return distance;
}

// Ring numbers for the concentric layout: the focus on ring 0, then each hop on one or more
// rings, so that a hop of many images forms several compact rings, not one huge circle.
const RING_LEVELS = 1000;
const NODES_PER_RING_PER_HOP = 18;

function ringsByHop(nodes, hopOf) {
  const byHop = new Map();
  for (const node of nodes) {
    const hop = hopOf(node);
    if (!byHop.has(hop)) byHop.set(hop, []);
    byHop.get(hop).push(node);
  }
  const rings = new Map();
  let nextRing = 0;
  for (const hop of [...byHop.keys()].sort((a, b) => a - b)) {
    const members = byHop.get(hop);
    const ringCount = hop === 0 ? 1
      : Math.max(1, Math.ceil(members.length / (NODES_PER_RING_PER_HOP * hop)));
    members.forEach((node, index) => rings.set(node.key, nextRing + (index % ringCount)));
    nextRing += ringCount;
  }
  return rings;
}

function draw(graph) {
  const { nodes, edges, focus } = graph;
  const distance = hopDistances(focus, edges);
  const weights = edges.map((edge) => edge.weight);
  const low = Math.min(...weights);
  const high = Math.max(...weights);
  const edgeWidth = (weight) => (high - low < 1e-6 ? 4 : 1.5 + 8.5 * ((weight - low) / (high - low)));
  const hopOf = (node) => node.hop ?? distance.get(node.key) ?? MAX_HOPS + 1;
  const ringOf = ringsByHop(nodes, hopOf);
  // Same-community nodes side by side on their ring (concentric keeps insertion order).
  const ordered = [...nodes].sort((a, b) => hopOf(a) - hopOf(b)
    || (a.community ?? Infinity) - (b.community ?? Infinity) || a.key.localeCompare(b.key));
  cy.elements().remove();
  cy.add(ordered.map((node) => ({
    group: 'nodes',
    data: {
      id: node.key,
      community: node.community ?? null,
      colour: communityColour(node.community),
      findings: node.findings || [],
      hop: hopOf(node),
      ring: ringOf.get(node.key),
      thumbnailUrl: node.thumbnail_url || thumbnailPath(node.key),
      thumb: '',
    },
    classes: node.key === focus ? 'focus' : '',
  })));
  const known = new Set(nodes.map((node) => node.key));
  cy.add(edges.filter((edge) => known.has(edge.source) && known.has(edge.target))
    .map((edge) => ({
      group: 'edges',
      data: {
        id: `${edge.source}|${edge.target}`,
        source: edge.source,
        target: edge.target,
        weight: edge.weight,
        width: edgeWidth(edge.weight),
      },
      classes: edge.source === focus || edge.target === focus ? 'from-focus' : '',
    })));
  cy.layout({
    name: 'concentric',
    concentric: (node) => RING_LEVELS - node.data('ring'),
    levelWidth: () => 1,
    minNodeSpacing: 12,
    animate: false,
    fit: true,
    padding: 30,
  }).run();
  cy.nodes().forEach((node) => {
    loadImage(node.data('thumbnailUrl'))
      .then((objectUrl) => { if (!node.removed()) node.data('thumb', objectUrl); })
      .catch(() => {});
  });
}

function showHover(node) {
  const hover = sidePanel.querySelector('#graph-hover');
  if (!hover) return;
  const focusKey = root.dataset.focus;
  const edge = node.edgesWith(cy.getElementById(focusKey));
  hover.replaceChildren(
    h('h3', {}, node.id() === focusKey ? 'Focus' : 'Hovered image'),
    h('p', { class: 'mono', title: node.id() }, shortKey(node.id())),
    h('p', {}, communityChip(node.data('community')),
      edge.length ? ` cos ${formatNumber(edge[0].data('weight'))} to the focus` : '',
      node.id() === focusKey ? '' : ` · hop ${node.data('hop')}`),
    findingList(node.data('findings')));
}

function renderSide(graph) {
  const focusNode = graph.nodes.find((node) => node.key === graph.focus) || { key: graph.focus };
  const communities = new Map();
  for (const node of graph.nodes) {
    const id = node.community ?? null;
    communities.set(id, (communities.get(id) || 0) + 1);
  }
  const legend = h('ul', { class: 'legend', id: 'graph-legend' },
    [...communities.entries()].sort((a, b) => b[1] - a[1]).map(([community, count]) => h('li', {},
      h('span', { class: 'swatch', style: `background: ${communityColour(community)}` }),
      communityChip(community), ` ${count} image${count === 1 ? '' : 's'}`)));
  sidePanel.replaceChildren(
    h('h2', {}, 'Focus'),
    thumbnail(graph.focus, { size: 'lg', url: focusNode.thumbnail_url }),
    h('p', { class: 'mono', title: graph.focus }, shortKey(graph.focus)),
    h('p', {}, communityChip(focusNode.community)),
    findingList(focusNode.findings),
    h('p', { class: 'links' },
      h('a', { href: hashFor('image', [graph.focus]) }, 'details'), ' · ',
      h('a', { href: hashFor('search', [], { key: graph.focus }) }, 'search similar')),
    h('p', { class: 'muted', id: 'graph-counts' },
      `${graph.nodes.length} images, ${graph.edges.length} edges`,
      graph.truncated ? ' (cut to the strongest links)' : ''),
    h('h3', {}, 'Communities'), legend,
    h('div', { id: 'graph-hover', class: 'hover-info' },
      h('p', { class: 'muted' }, 'Hover a node for its findings; click it to make it the focus.')));
}

function setStatus(status) {
  root.dataset.status = status;
  canvas.dataset.status = status;
}

async function load(state) {
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  shownState = JSON.stringify(state);
  setStatus('loading');
  overlay.hidden = false;
  overlay.replaceChildren(loadingPanel(`Loading the ${state.hops}-hop neighbourhood…`));
  try {
    const payload = await apiFetch(`/images/${encodeURIComponent(state.key)}/neighbourhood`, {
      params: { hops: state.hops, min_weight: state.minWeight.toFixed(2) },
      signal,
    });
    const graph = normalise(payload, state.key);
    root.dataset.focus = graph.focus;
    draw(graph);
    renderSide(graph);
    overlay.hidden = true;
    overlay.replaceChildren();
    setStatus('ready');
  } catch (error) {
    if (error.name === 'AbortError') return;
    if (!(error instanceof ApiError)) console.error(error);
    cy.elements().remove();
    delete root.dataset.focus;
    overlay.hidden = false;
    overlay.replaceChildren(errorPanel(error, () => load(state)));
    setStatus('error');
  }
}

export const graphView = {
  mount(container, route) {
    root = container;
    const state = readParams(route.params);
    controls = buildControls(state);
    canvas = h('div', { id: 'graph-canvas', class: 'graph-canvas' });
    overlay = h('div', { class: 'graph-overlay', hidden: true });
    sidePanel = h('aside', { class: 'panel graph-side', id: 'graph-side' });
    container.append(
      h('section', { class: 'panel' }, h('h1', {}, 'Neighbourhood graph'), controls),
      h('div', { class: 'graph-layout' },
        h('div', { class: 'panel graph-panel' }, canvas, overlay), sidePanel));
    cy = createCy();
    window.medgraphCy = cy;
    shownState = '';
    this.update(route);
  },
  update(route, { force = false } = {}) {
    const state = readParams(route.params);
    syncControls(state);
    if (!state.key) {
      setStatus('idle');
      overlay.hidden = false;
      overlay.replaceChildren(emptyPanel('Enter the key of an image to see its neighbourhood, '
        + 'or open one from a search result or a community.'));
      sidePanel.replaceChildren();
      return;
    }
    if (force || JSON.stringify(state) !== shownState) load(state);
  },
  unmount() {
    controller?.abort();
    clearTimeout(sliderTimer);
    cy?.destroy();
    cy = null;
    window.medgraphCy = null;
    root = null;
  },
};
