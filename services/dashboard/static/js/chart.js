// The finding histogram: horizontal SVG bars, one per finding, longest first.

import { NO_FINDING, svg } from './dom.js';

// Accepts the API's [{finding, images}] (also {finding: count} and [[finding, count]]).
export function findingCounts(histogram) {
  if (!histogram) return [];
  let pairs;
  if (Array.isArray(histogram)) {
    pairs = histogram.map((item) => (Array.isArray(item)
      ? [item[0], item[1]]
      : [item.finding ?? item.name, item.images ?? item.count]));
  } else {
    pairs = Object.entries(histogram);
  }
  return pairs
    .map(([finding, count]) => [finding || NO_FINDING, Number(count) || 0])
    .filter(([, count]) => count > 0)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

export function findingHistogram(histogram, { maxBars = 8, width = 320, title = null } = {}) {
  const counts = findingCounts(histogram);
  const shown = counts.slice(0, maxBars);
  const rest = counts.slice(maxBars).reduce((sum, [, count]) => sum + count, 0);
  if (rest > 0) shown.push([`${counts.length - maxBars} more`, rest]);

  const barHeight = 16;
  const gap = 4;
  const labelWidth = Math.round(width * 0.42);
  const valueWidth = 34;
  const barSpace = width - labelWidth - valueWidth;
  const height = Math.max(shown.length, 1) * (barHeight + gap) + gap;
  const largest = Math.max(1, ...shown.map(([, count]) => count));

  const chart = svg('svg', {
    class: 'histogram',
    viewBox: `0 0 ${width} ${height}`,
    width: '100%',
    role: 'img',
    'aria-label': title || 'finding histogram',
    'data-bars': String(shown.length),
  });
  if (title) chart.append(svg('title', {}, title));
  if (!shown.length) {
    chart.append(svg('text', { x: 4, y: barHeight, class: 'histogram-empty' }, 'no findings data'));
    return chart;
  }
  shown.forEach(([finding, count], index) => {
    const y = gap + index * (barHeight + gap);
    const barWidth = Math.max(2, (count / largest) * barSpace);
    const isNone = finding === NO_FINDING;
    chart.append(svg('g', { class: 'histogram-row' },
      svg('title', {}, `${finding}: ${count}`),
      svg('text', {
        x: labelWidth - 6, y: y + barHeight - 4, 'text-anchor': 'end', class: 'histogram-label',
      }, truncate(finding, Math.floor(labelWidth / 6.4))),
      svg('rect', {
        x: labelWidth, y, width: barWidth.toFixed(1), height: barHeight, rx: 2,
        class: isNone ? 'histogram-bar histogram-bar-none' : 'histogram-bar',
      }),
      svg('text', {
        x: labelWidth + barWidth + 4, y: y + barHeight - 4, class: 'histogram-value',
      }, String(count))));
  });
  return chart;
}

function truncate(text, length) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}
