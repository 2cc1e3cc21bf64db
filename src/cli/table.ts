/**
 * Text for a terminal with its control characters made visible (\x1b, \r …): a token's cmd or an
 * instance's answer is anyone's text, and raw it could clear the screen, retitle the window or
 * fake table rows. Line feeds (and tabs) stay only where `lines` says the text is made of lines.
 */
export function visible(text: string, lines: boolean): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => {
    if (lines && (c === '\n' || c === '\t')) return c
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`
  })
}

/** Plain-text tables for the terminal: a header row, then rows, columns padded to fit. */
export function table(headers: readonly string[], rows: readonly (readonly unknown[])[]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === undefined || c === null ? '-' : visible(String(c), false))))]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  return `${cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n')}\n`
}
