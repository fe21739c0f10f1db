// Search: an image by key or by upload -> ranked thumbnail grid, the query's findings beside it.

import { apiFetch, pageConfig } from '../api.js';
import {
  communityChip, emptyPanel, findingList, formatNumber, h, shortKey, thumbnail, withStates,
} from '../dom.js';
import { hashFor, navigate } from '../router.js';

const STRATEGIES = [
  ['region', 'region growing (paper, Algorithm 1)'],
  ['exact', 'exact cosine (all images)'],
  ['vector', 'vector index (approximate)'],
];
// rerank=findings: the strategy's first 8 x K results re-ordered by the images' predicted
// findings (services/retrieval/rerank.py).
const ORDERS = [
  ['none', "the strategy's own"],
  ['findings', 're-ranked by predicted findings'],
];
// The multipart field the API reads the uploaded image from.
const UPLOAD_FIELD = 'file';

let root = null;
let form = null;
let querySide = null;
let resultsArea = null;
let controller = null;
let lastSearch = '';
// The query image's own details, loaded beside the search.
let queryDetails = Promise.resolve();

function defaultOrder() {
  return pageConfig.defaultRerank === 'findings' ? 'findings' : 'none';
}

function readParams(params) {
  const k = Number.parseInt(params.get('k') || '', 10);
  return {
    key: (params.get('key') || '').trim(),
    k: Number.isFinite(k) && k > 0 ? Math.min(k, pageConfig.maxK) : pageConfig.defaultK,
    strategy: STRATEGIES.some(([name]) => name === params.get('strategy'))
      ? params.get('strategy') : 'region',
    // The API's default: leave out the query patient's other images.
    excludeSamePatient: params.get('exclude_same_patient') !== '0',
    rerank: ORDERS.some(([name]) => name === params.get('rerank'))
      ? params.get('rerank') : defaultOrder(),
  };
}

function buildForm(state) {
  const keyInput = h('input', {
    name: 'key', id: 'search-key', type: 'text', value: state.key, spellcheck: 'false',
    placeholder: 'image key (SHA-256)', autocomplete: 'off',
  });
  const fileInput = h('input', {
    name: 'file', id: 'search-file', type: 'file', accept: 'image/png,image/jpeg,.dcm,application/dicom',
  });
  const kInput = h('input', {
    name: 'k', id: 'search-k', type: 'number', min: 1, max: pageConfig.maxK, value: state.k,
  });
  const strategySelect = h('select', { name: 'strategy', id: 'search-strategy' },
    STRATEGIES.map(([name, label]) => h('option', {
      value: name, selected: name === state.strategy,
    }, label)));
  const orderSelect = h('select', { name: 'rerank', id: 'search-order' },
    ORDERS.map(([name, label]) => h('option', {
      value: name, selected: name === state.rerank,
    }, label)));
  const excludeBox = h('input', {
    name: 'exclude_same_patient', id: 'search-exclude', type: 'checkbox',
    checked: state.excludeSamePatient,
  });
  const element = h('form', { class: 'toolbar search-form', id: 'search-form' },
    h('div', { class: 'field field-wide' }, h('label', { for: 'search-key' }, 'Image key'), keyInput),
    h('div', { class: 'field' }, h('label', { for: 'search-file' }, 'or upload'), fileInput),
    h('div', { class: 'field' }, h('label', { for: 'search-strategy' }, 'Strategy'), strategySelect),
    h('div', { class: 'field' }, h('label', { for: 'search-order' }, 'Order'), orderSelect),
    h('div', { class: 'field field-narrow' }, h('label', { for: 'search-k' }, 'K'), kInput),
    h('div', { class: 'field field-check' }, excludeBox,
      h('label', { for: 'search-exclude' }, 'exclude same patient')),
    h('button', { type: 'submit', class: 'primary', id: 'search-submit' }, 'Search'));
  fileInput.addEventListener('change', () => {
    if (fileInput.files.length) keyInput.value = '';
  });
  keyInput.addEventListener('input', () => {
    if (keyInput.value) fileInput.value = '';
  });
  element.addEventListener('submit', (event) => {
    event.preventDefault();
    const params = {
      k: Math.max(1, Math.min(Number.parseInt(kInput.value, 10) || pageConfig.defaultK,
        pageConfig.maxK)),
      strategy: strategySelect.value,
      // The server's default order stays out of the URL.
      rerank: orderSelect.value === defaultOrder() ? '' : orderSelect.value,
      exclude_same_patient: excludeBox.checked ? '' : '0',
    };
    if (fileInput.files.length) {
      navigate('search', [], params, { replace: true });
      runUpload(fileInput.files[0], params);
    } else if (keyInput.value.trim()) {
      const hash = hashFor('search', [], { key: keyInput.value.trim(), ...params });
      if (hash === window.location.hash) runKeySearch(readParams(new URLSearchParams(hash.split('?')[1])));
      else navigate('search', [], { key: keyInput.value.trim(), ...params });
    } else {
      keyInput.focus();
      resultsArea.replaceChildren(emptyPanel('Enter an image key or choose a file to upload.'));
    }
  });
  return element;
}

function syncForm(state) {
  form.querySelector('#search-key').value = state.key;
  form.querySelector('#search-k').value = state.k;
  form.querySelector('#search-strategy').value = state.strategy;
  form.querySelector('#search-order').value = state.rerank;
  form.querySelector('#search-exclude').checked = state.excludeSamePatient;
}

function newController() {
  controller?.abort();
  controller = new AbortController();
  return controller.signal;
}

function runKeySearch(state) {
  const signal = newController();
  lastSearch = JSON.stringify(state);
  const body = new FormData();
  body.set('key', state.key);
  body.set('k', String(state.k));
  body.set('strategy', state.strategy);
  body.set('rerank', state.rerank);
  body.set('exclude_same_patient', state.excludeSamePatient ? 'true' : 'false');
  showQueryByKey(state.key, signal);
  return runSearch(body, signal, state);
}

function runUpload(file, params) {
  const signal = newController();
  lastSearch = '';
  queryDetails = Promise.resolve();
  const body = new FormData();
  body.set(UPLOAD_FIELD, file, file.name);
  body.set('k', String(params.k));
  body.set('strategy', params.strategy);
  body.set('rerank', params.rerank || defaultOrder());
  body.set('exclude_same_patient', params.exclude_same_patient === '0' ? 'false' : 'true');
  const preview = h('img', { class: 'thumb thumb-lg', alt: 'uploaded image' });
  preview.src = URL.createObjectURL(file);
  querySide.replaceChildren(h('h2', {}, 'Query'), preview,
    h('p', { class: 'muted' }, `uploaded: ${file.name}`),
    h('div', { id: 'query-findings' }, h('p', { class: 'muted' }, 'findings: not known for an upload')));
  return runSearch(body, signal, { ...params, key: '' });
}

function showQueryByKey(key, signal) {
  querySide.replaceChildren(h('h2', {}, 'Query'), thumbnail(key, { size: 'lg' }),
    h('p', { class: 'mono', title: key }, shortKey(key)));
  const details = h('div', { id: 'query-findings', class: 'query-details' });
  querySide.append(details);
  queryDetails = withStates(details,
    () => apiFetch(`/images/${encodeURIComponent(key)}`, { signal }),
    (image) => renderQueryDetails(details, image),
    { loadingMessage: 'Loading the query image…' });
}

function renderQueryDetails(details, image) {
  details.replaceChildren(
    h('h3', {}, 'Findings'), findingList(image.findings),
    h('p', {}, 'Community ', communityChip(image.community)),
    h('p', { class: 'links' },
      h('a', { href: hashFor('image', [image.key]) }, 'details'), ' · ',
      h('a', { href: hashFor('graph', [], { key: image.key }) }, 'neighbourhood')));
}

function runSearch(body, signal, state) {
  root.dataset.status = 'loading';
  return withStates(resultsArea, () => apiFetch('/search', { method: 'POST', body, signal }),
    (response) => renderResults(response, state),
    {
      loadingMessage: `Searching (${state.strategy}, K = ${state.k})…`,
      onStatus: (status) => { root.dataset.status = status; },
    });
}

function resultsOf(response) {
  return response.results || response.hits || [];
}

function renderResults(response, state) {
  const results = resultsOf(response);
  const query = response.query || {};
  const details = querySide.querySelector('#query-findings');
  if (!state.key && query.key) {
    querySide.querySelector('.muted')?.after(h('p', { class: 'mono', title: query.key },
      `SHA-256 ${shortKey(query.key)}`,
      // null: a read key is not told whether the file is archived.
      query.stored === true ? ' (stored)' : query.stored === false ? ' (not stored)' : ''));
    if (query.stored) {
      // An uploaded file that is already in the graph: its findings are known.
      queryDetails = withStates(details, () => apiFetch(`/images/${encodeURIComponent(query.key)}`),
        (image) => renderQueryDetails(details, image), { loadingMessage: 'Loading findings…' });
    }
  }
  const diagnostics = response.diagnostics || {};
  resultsArea.append(h('div', { class: 'results-header' },
    h('h2', {}, `${results.length} result${results.length === 1 ? '' : 's'}`),
    diagnosticsLine(diagnostics, response)));
  if (!results.length) {
    resultsArea.append(emptyPanel('No image passed the filters.'));
    return queryDetails;
  }
  const grid = h('div', { class: 'card-grid', id: 'results' });
  results.forEach((result, index) => grid.append(resultCard(result, index)));
  resultsArea.append(grid);
  highlightSharedFindings(grid, details);
  return queryDetails;
}

// The query's findings arrive on their own request; mark the shared ones once they are there.
function highlightSharedFindings(grid, details) {
  const apply = () => {
    const shared = new Set([...details.querySelectorAll('.findings li.finding')]
      .map((li) => li.textContent));
    for (const li of grid.querySelectorAll('.findings li')) {
      const isShared = shared.has(li.textContent);
      li.classList.toggle('shared', isShared);
      li.title = isShared ? 'also a finding of the query' : '';
    }
  };
  if (details.dataset.status !== 'loading') {
    apply();
    return;
  }
  new MutationObserver((_, observer) => {
    if (details.dataset.status !== 'loading') {
      observer.disconnect();
      apply();
    }
  }).observe(details, { attributes: true, attributeFilter: ['data-status'] });
}

function diagnosticsLine(diagnostics, response) {
  const parts = [];
  if (diagnostics.strategy) parts.push(diagnostics.strategy);
  if (diagnostics.rerank === 'findings') {
    parts.push(`re-ranked by predicted findings (first ${diagnostics.rerank_candidates})`);
  }
  if (diagnostics.images_examined !== undefined && diagnostics.database_size) {
    parts.push(`examined ${diagnostics.images_examined} of ${diagnostics.database_size} images`);
  }
  if (diagnostics.community !== undefined && diagnostics.community !== null) {
    parts.push(`closest community C${diagnostics.community}`);
  }
  const stages = diagnostics.stage_ms || {};
  const total = diagnostics.total_ms ?? response.took_ms
    ?? Object.values(stages).reduce((sum, ms) => sum + Number(ms || 0), 0);
  if (total) parts.push(`${Number(total).toFixed(1)} ms`);
  return h('p', { class: 'muted diagnostics', title: JSON.stringify(diagnostics, null, 1) },
    parts.join(' · '));
}

function resultCard(result, index) {
  const rank = result.rank ?? index + 1;
  return h('article', {
    class: 'card result-card', dataset: { testid: 'result-card', key: result.key, rank },
  },
  h('a', { class: 'card-image', href: hashFor('image', [result.key]), title: 'image details' },
    thumbnail(result.key, { url: result.thumbnail_url }),
    h('span', { class: 'rank-badge' }, `#${rank}`)),
  h('div', { class: 'card-body' },
    h('div', { class: 'card-row' },
      h('span', { class: 'cosine', title: 'cosine similarity to the query' },
        `cos ${formatNumber(result.cosine)}`),
      result.finding_agreement === null || result.finding_agreement === undefined ? null
        : h('span', {
          class: 'agreement',
          title: 'log probability that every predicted finding agrees with the query\'s',
        }, `agree ${formatNumber(result.finding_agreement)}`),
      communityChip(result.community)),
    findingList(result.findings),
    h('div', { class: 'card-row card-links' },
      h('a', { href: hashFor('search', [], { key: result.key }) }, 'search'),
      h('a', { href: hashFor('graph', [], { key: result.key }) }, 'graph'))));
}

export const searchView = {
  mount(container, route) {
    root = container;
    const state = readParams(route.params);
    form = buildForm(state);
    querySide = h('aside', { class: 'query-side panel', id: 'query' },
      h('h2', {}, 'Query'), h('p', { class: 'muted' }, 'No query yet.'));
    resultsArea = h('section', { class: 'results', id: 'results-area', 'aria-live': 'polite' },
      emptyPanel('Search by an image key or upload an image. Keys appear on every card and in '
        + 'the community browser.'));
    container.append(
      h('section', { class: 'panel' }, h('h1', {}, 'Search similar images'), form),
      h('div', { class: 'search-layout' }, querySide, resultsArea));
    lastSearch = '';
    this.update(route);
  },
  update(route, { force = false } = {}) {
    const state = readParams(route.params);
    syncForm(state);
    if (state.key && (force || JSON.stringify(state) !== lastSearch)) runKeySearch(state);
  },
  unmount() {
    controller?.abort();
    root = null;
  },
};
