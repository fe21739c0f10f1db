// Entry point: the header (tabs, API key, health) and the hash router that switches views.

import { apiFetch, getApiKey, setApiKey } from './api.js';
import { navigate, parseHash } from './router.js';
import { communitiesView } from './views/communities.js';
import { graphView } from './views/graph.js';
import { imageView } from './views/image.js';
import { searchView } from './views/search.js';

const views = {
  search: searchView,
  graph: graphView,
  communities: communitiesView,
  image: imageView,
};

const root = document.getElementById('view');
let current = null; // { name, view }

function route() {
  // Stamped before the view runs: a waiter (the browser tests, screenshots) can tell the status of
  // this address from the status the previous one left, since hashchange arrives a task later.
  root.dataset.route = window.location.hash;
  const state = parseHash();
  const view = views[state.view];
  if (!view) {
    navigate('search', [], {}, { replace: true });
    return;
  }
  for (const tab of document.querySelectorAll('.tabs a')) {
    tab.classList.toggle('active', tab.dataset.view === state.view);
    if (tab.dataset.view === state.view) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  const imageTab = document.getElementById('image-tab');
  if (state.view === 'image' && state.args[0]) {
    imageTab.hidden = false;
    imageTab.href = window.location.hash;
  }
  if (current && current.name === state.view) {
    current.view.update(state);
    return;
  }
  current?.view.unmount?.();
  root.replaceChildren();
  root.dataset.view = state.view;
  root.dataset.status = 'idle';
  delete root.dataset.focus;
  current = { name: state.view, view };
  view.mount(root, state);
}

function showApiKey() {
  document.getElementById('api-key-input').value = getApiKey();
  document.getElementById('api-key-form').dataset.hasKey = String(Boolean(getApiKey()));
}

function setUpApiKey() {
  const form = document.getElementById('api-key-form');
  const input = document.getElementById('api-key-input');
  showApiKey();
  const apply = (key) => {
    setApiKey(key);
    showApiKey();
    checkHealth();
    // Re-run the current view with the new credentials.
    current?.view.update(parseHash(), { force: true });
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    apply(input.value.trim());
  });
  document.getElementById('api-key-clear').addEventListener('click', () => {
    input.value = '';
    apply('');
  });
}

// The badge reflects /ready: the page needs Neo4j; Redis and workers only matter for jobs.
async function checkHealth() {
  const badge = document.getElementById('health');
  let readiness;
  try {
    readiness = await apiFetch('/ready');
  } catch (error) {
    readiness = error.payload && error.payload.checks ? error.payload : null;
    if (!readiness) {
      badge.dataset.status = 'down';
      badge.textContent = 'API unreachable';
      badge.title = error.message;
      return;
    }
  }
  const checks = readiness.checks || {};
  const graphOk = !checks.neo4j || checks.neo4j.ok;
  badge.dataset.status = readiness.ready ? 'ok' : graphOk ? 'degraded' : 'down';
  badge.textContent = readiness.ready ? 'API ready' : graphOk ? 'API up' : 'Neo4j down';
  badge.title = Object.entries(checks)
    .map(([name, check]) => `${name}: ${check.ok ? 'ok' : 'NOT OK'} — ${check.detail}`).join('\n');
}

// `medgraph demo` prints the dashboard address as /dashboard/#key=<API key>: take the key into
// sessionStorage and drop it from the address bar and the history at once.
function takeApiKeyFromAddress() {
  const match = window.location.hash.match(/^#key=([^&]+)$/);
  if (!match) return;
  setApiKey(decodeURIComponent(match[1]));
  window.history.replaceState(null, '', `${window.location.pathname}${window.location.search}#/search`);
}

takeApiKeyFromAddress();
setUpApiKey();
window.addEventListener('hashchange', () => {
  if (window.location.hash.startsWith('#key=')) {
    takeApiKeyFromAddress();
    showApiKey();
  }
  route();
});
route();
checkHealth();
