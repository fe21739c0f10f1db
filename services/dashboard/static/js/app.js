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
  current = { name: state.view, view };
  view.mount(root, state);
}

function setUpApiKey() {
  const form = document.getElementById('api-key-form');
  const input = document.getElementById('api-key-input');
  input.value = getApiKey();
  form.dataset.hasKey = String(Boolean(getApiKey()));
  const apply = (key) => {
    setApiKey(key);
    form.dataset.hasKey = String(Boolean(key));
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

async function checkHealth() {
  const badge = document.getElementById('health');
  try {
    const health = await apiFetch('/health');
    const status = (health && (health.status || health.state)) || 'ok';
    const healthy = ['ok', 'healthy', 'up', 'ready'].includes(String(status).toLowerCase());
    badge.dataset.status = healthy ? 'ok' : 'degraded';
    badge.textContent = healthy ? 'API ok' : `API ${status}`;
    badge.title = JSON.stringify(health, null, 1);
  } catch (error) {
    badge.dataset.status = 'down';
    badge.textContent = 'API unreachable';
    badge.title = error.message;
  }
}

setUpApiKey();
window.addEventListener('hashchange', route);
route();
checkHealth();
