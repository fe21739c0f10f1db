// Community browser: every community with size, finding histogram, purity and samples;
// one community's members and its links to other communities.

import { apiFetch, pageConfig } from '../api.js';
import { findingCounts, findingHistogram } from '../chart.js';
import {
  communityChip, communityColour, emptyPanel, findingList, formatNumber, h, shortKey, thumbnail,
  withStates,
} from '../dom.js';
import { hashFor } from '../router.js';

const SAMPLE_THUMBNAILS = 6;
const MEMBERS_SHOWN = 50;
const LIST_LIMIT = 1000;
const PARALLEL_SAMPLE_REQUESTS = 4;

let root = null;
let body = null;
let controller = null;
let shown = null;

// Purity: the share of members that carry the community's most common finding.
function purity(community) {
  const counts = findingCounts(community.findings);
  if (!counts.length || !community.size) return null;
  const [finding, count] = counts[0];
  return { share: count / community.size, finding };
}

function purityText(community) {
  const value = purity(community);
  return value ? `${(value.share * 100).toFixed(0)}% ${value.finding}` : '—';
}

function summaryLine(payload, communities) {
  const parts = [`${payload.total ?? communities.length} communities`];
  const images = communities.reduce((sum, community) => sum + (community.size || 0), 0);
  parts.push(`${images} images`);
  const run = payload.run || {};
  const properties = run.properties || {};
  const modularity = properties.modularity;
  if (typeof modularity === 'number') parts.push(`modularity ${modularity.toFixed(3)}`);
  if (properties.algorithm) parts.push(String(properties.algorithm));
  if (run.id) parts.push(`run ${run.id}`);
  if (payload.total > communities.length) parts.push(`showing the ${communities.length} largest`);
  return h('p', { class: 'muted', id: 'communities-summary' }, parts.join(' · '));
}

function communityCard(community) {
  const id = community.id;
  const samples = h('div', { class: 'samples', dataset: { community: id } },
    h('span', { class: 'muted' }, 'samples…'));
  const card = h('article', {
    class: 'card community-card',
    style: `--community: ${communityColour(id)}`,
    dataset: { testid: 'community-card', community: id },
  },
  h('header', { class: 'community-card-header' },
    h('a', { href: hashFor('communities', [String(id)]), class: 'community-title' },
      h('span', { class: 'swatch', style: `background: ${communityColour(id)}` }),
      `Community ${id}`),
    h('span', { class: 'muted' }, `${community.size ?? '?'} images`)),
  h('dl', { class: 'stats' },
    h('dt', {}, 'purity'),
    h('dd', { title: 'share of members with the most common finding' }, purityText(community))),
  findingHistogram(community.findings, { title: `Findings in community ${id}` }),
  samples,
  h('a', { class: 'open-link', href: hashFor('communities', [String(id)]) }, 'Open →'));
  return { card, samples };
}

// Sample thumbnails come from each community's detail (its strongest members), a few requests
// at a time so a long list does not flood the API.
async function fillSamples(slots, signal) {
  const queue = [...slots];
  const worker = async () => {
    while (queue.length && !signal.aborted) {
      const { id, samples } = queue.shift();
      try {
        const detail = await apiFetch(`/communities/${encodeURIComponent(id)}`,
          { params: { members: SAMPLE_THUMBNAILS }, signal });
        samples.replaceChildren(...detail.members.map((member) => h('a', {
          href: hashFor('image', [member.key]), title: shortKey(member.key),
        }, thumbnail(member.key, { url: member.thumbnail_url, size: 'sm' }))));
      } catch (error) {
        if (error.name === 'AbortError') return;
        samples.replaceChildren(h('span', { class: 'muted', title: error.message },
          'samples unavailable'));
      }
    }
  };
  await Promise.all(Array.from({ length: PARALLEL_SAMPLE_REQUESTS }, worker));
}

function renderList(payload, signal) {
  const communities = payload.communities || [];
  body.append(summaryLine(payload, communities));
  if (!communities.length) {
    body.append(emptyPanel('No communities yet: run the clustering first.'));
    return;
  }
  const built = communities.map((community) => ({ id: community.id, ...communityCard(community) }));
  body.append(h('div', { class: 'card-grid community-grid', id: 'community-list' },
    built.map(({ card }) => card)));
  return fillSamples(built, signal);
}

function renderLinks(target, links, id) {
  const rows = links
    .map((link) => ({
      other: link.source === id ? link.target : link.source,
      weight: link.weight,
      pairs: link.pairs,
    }))
    .sort((a, b) => b.weight - a.weight);
  if (!rows.length) {
    target.append(h('p', { class: 'muted' }, 'No SIMILAR edges leave this community.'));
    return;
  }
  const strongest = rows[0].weight || 1;
  target.append(h('ul', { class: 'community-links', id: 'community-links' }, rows.map((row) => h(
    'li', { dataset: { community: row.other } },
    communityChip(row.other),
    h('span', { class: 'link-bar', style: `--share: ${(row.weight / strongest).toFixed(3)};`
      + ` --community: ${communityColour(row.other)}` }),
    h('span', { class: 'muted' },
      `${row.pairs ?? '?'} edges · weight ${formatNumber(row.weight, 2)}`),
  ))));
}

function loadLinks(target, id, signal) {
  const path = `/communities/${encodeURIComponent(id)}/links`;
  return withStates(target,
    () => apiFetch(path, { signal }).catch((error) => {
      // An API without the links route answers 404 with a message about the URL, not the id.
      if (error.status === 404 && !/communit/i.test(error.message)) return { unavailable: true };
      throw error;
    }),
    (payload) => (payload.unavailable
      ? target.append(h('p', { class: 'muted', id: 'community-links-unavailable' },
        `This API does not offer community links (GET ${pageConfig.apiBase}${path}).`))
      : renderLinks(target, payload.links || [], id)),
    { loadingMessage: 'Loading links…' });
}

function renderDetail(payload, signal) {
  const community = payload.community;
  const id = community.id;
  const members = payload.members || [];
  const links = h('div', { id: 'community-links-body' });
  body.append(
    h('p', {}, h('a', { href: '#/communities' }, '← all communities')),
    h('div', { class: 'community-detail', style: `--community: ${communityColour(id)}` },
      h('section', { class: 'panel community-summary' },
        h('h2', {}, h('span', { class: 'swatch', style: `background: ${communityColour(id)}` }),
          `Community ${id}`),
        h('dl', { class: 'stats' },
          h('dt', {}, 'images'), h('dd', {}, community.size ?? members.length),
          h('dt', {}, 'purity'), h('dd', {}, purityText(community)),
          h('dt', {}, 'internal weight'), h('dd', {}, formatNumber(community.internal_weight, 2)),
          h('dt', {}, 'cohesion'), h('dd', {
            title: 'share of the members\' edge weight that stays inside (2·internal / Σtot)',
          }, community.sigma_tot ? formatNumber(2 * community.internal_weight
            / community.sigma_tot, 2) : '—')),
        h('h3', {}, 'Findings'),
        findingHistogram(community.findings, { maxBars: 14, title: `Findings in ${id}` }),
        h('h3', {}, 'Links to other communities'),
        links),
      h('section', { class: 'panel community-members' },
        h('h2', {}, `Members (${members.length < (community.size ?? 0)
          ? `the ${members.length} most connected of ${community.size}` : members.length})`),
        h('div', { class: 'member-grid', id: 'community-members' }, members.map((member) => h('a', {
          class: 'member', href: hashFor('image', [member.key]),
          dataset: { testid: 'member', key: member.key },
          title: `${(member.findings || []).join(', ') || 'No Finding'} · weighted degree `
            + `${formatNumber(member.degree, 2)}`,
        },
        thumbnail(member.key, { url: member.thumbnail_url, size: 'sm' }),
        findingList(member.findings)))))));
  return loadLinks(links, id, signal);
}

function load(route) {
  controller?.abort();
  controller = new AbortController();
  const { signal } = controller;
  const id = route.args[0];
  shown = id ?? '';
  root.querySelector('h1').textContent = id === undefined ? 'Communities' : `Community ${id}`;
  const work = id === undefined
    ? () => apiFetch('/communities', { params: { limit: LIST_LIMIT }, signal })
    : () => apiFetch(`/communities/${encodeURIComponent(id)}`,
      { params: { members: MEMBERS_SHOWN }, signal });
  const build = id === undefined ? renderList : renderDetail;
  withStates(body, work, (payload) => build(payload, signal), {
    loadingMessage: id === undefined ? 'Loading communities…' : `Loading community ${id}…`,
    onStatus: (status) => { if (root) root.dataset.status = status; },
  });
}

export const communitiesView = {
  mount(container, route) {
    root = container;
    body = h('div', { id: 'communities-body' });
    container.append(h('section', { class: 'panel' }, h('h1', {}, 'Communities'),
      h('p', { class: 'muted' }, 'Clusters of similar images found by modularity-based '
        + 'community detection on the SIMILAR graph.')), body);
    shown = null;
    this.update(route);
  },
  update(route, { force = false } = {}) {
    if (force || (route.args[0] ?? '') !== shown) load(route);
  },
  unmount() {
    controller?.abort();
    root = null;
  },
};
