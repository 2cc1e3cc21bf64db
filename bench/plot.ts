/**
 * A scatter plot of keep-alive policies as a PNG, with nothing but node:zlib: one panel per
 * trace, wasted idle memory-time (x, fixed-10 = 100 %) against the 3rd-quartile app cold-start
 * % (y); fixed keep-alives in blue joined by a line, the adaptive policy in red.
 */
import { crc32, deflateSync } from 'node:zlib'

type Rgb = readonly [number, number, number]

/** A 3×5 pixel font: five rows of three bits per glyph (letters drawn as capitals). */
const GLYPHS: Readonly<Record<string, readonly number[]>> = {
  '0': [7, 5, 5, 5, 7], '1': [2, 6, 2, 2, 7], '2': [7, 1, 7, 4, 7], '3': [7, 1, 7, 1, 7], '4': [5, 5, 7, 1, 1],
  '5': [7, 4, 7, 1, 7], '6': [7, 4, 7, 5, 7], '7': [7, 1, 2, 2, 2], '8': [7, 5, 7, 5, 7], '9': [7, 5, 7, 1, 7],
  A: [2, 5, 7, 5, 5], B: [6, 5, 6, 5, 6], C: [3, 4, 4, 4, 3], D: [6, 5, 5, 5, 6], E: [7, 4, 6, 4, 7], F: [7, 4, 6, 4, 4],
  G: [3, 4, 5, 5, 3], H: [5, 5, 7, 5, 5], I: [7, 2, 2, 2, 7], J: [1, 1, 1, 5, 2], K: [5, 5, 6, 5, 5], L: [4, 4, 4, 4, 7],
  M: [5, 7, 7, 5, 5], N: [6, 5, 5, 5, 5], O: [2, 5, 5, 5, 2], P: [6, 5, 6, 4, 4], Q: [2, 5, 5, 6, 3], R: [6, 5, 6, 5, 5],
  S: [3, 4, 2, 1, 6], T: [7, 2, 2, 2, 2], U: [5, 5, 5, 5, 7], V: [5, 5, 5, 5, 2], W: [5, 5, 7, 7, 5], X: [5, 5, 2, 5, 5],
  Y: [5, 5, 2, 2, 2], Z: [7, 1, 2, 4, 7], '-': [0, 0, 7, 0, 0], '.': [0, 0, 0, 0, 2], '%': [5, 1, 2, 4, 5], '(': [1, 2, 2, 2, 1],
  ')': [4, 2, 2, 2, 4], '=': [0, 7, 0, 7, 0], _: [0, 0, 0, 0, 7], ':': [0, 2, 0, 2, 0], ',': [0, 0, 0, 2, 4], '/': [1, 1, 2, 4, 4],
  ' ': [0, 0, 0, 0, 0], '×': [0, 5, 2, 5, 0],
}

class Canvas {
  readonly width: number
  readonly height: number
  readonly pixels: Uint8Array

  constructor(width: number, height: number) {
    this.width = width
    this.height = height
    this.pixels = new Uint8Array(width * height * 3).fill(255)
  }

  set(x: number, y: number, [r, g, b]: Rgb): void {
    const xi = Math.round(x)
    const yi = Math.round(y)
    if (xi < 0 || yi < 0 || xi >= this.width || yi >= this.height) return
    const i = (yi * this.width + xi) * 3
    this.pixels[i] = r
    this.pixels[i + 1] = g
    this.pixels[i + 2] = b
  }

  rect(x: number, y: number, w: number, h: number, color: Rgb): void {
    for (let dy = 0; dy < h; dy++) for (let dx = 0; dx < w; dx++) this.set(x + dx, y + dy, color)
  }

  line(x0: number, y0: number, x1: number, y1: number, color: Rgb): void {
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))))
    for (let s = 0; s <= steps; s++) this.set(x0 + ((x1 - x0) * s) / steps, y0 + ((y1 - y0) * s) / steps, color)
  }

  /** Text at (x, y) top-left, each font pixel `scale` pixels; returns its width. */
  text(x: number, y: number, text: string, color: Rgb, scale = 2): number {
    let cx = x
    for (const ch of text) {
      const glyph = GLYPHS[ch.toUpperCase()] ?? GLYPHS[' '] ?? []
      glyph.forEach((row, r) => {
        for (let c = 0; c < 3; c++) if ((row >> (2 - c)) & 1) this.rect(cx + c * scale, y + r * scale, scale, scale, color)
      })
      cx += 4 * scale
    }
    return cx - x
  }

  /** Text turned a quarter left (for a y-axis title), its baseline at x, centred on y. */
  textUp(x: number, y: number, text: string, color: Rgb, scale = 2): void {
    let cy = y + (text.length * 4 * scale) / 2
    for (const ch of text) {
      const glyph = GLYPHS[ch.toUpperCase()] ?? GLYPHS[' '] ?? []
      glyph.forEach((row, r) => {
        for (let c = 0; c < 3; c++) if ((row >> (2 - c)) & 1) this.rect(x + r * scale, cy - (c + 1) * scale, scale, scale, color)
      })
      cy -= 4 * scale
    }
  }

  png(): Buffer {
    const raw = Buffer.alloc((this.width * 3 + 1) * this.height)
    for (let y = 0; y < this.height; y++) {
      raw[y * (this.width * 3 + 1)] = 0
      Buffer.from(this.pixels.buffer, y * this.width * 3, this.width * 3).copy(raw, y * (this.width * 3 + 1) + 1)
    }
    const chunk = (type: string, data: Buffer): Buffer => {
      const length = Buffer.alloc(4)
      length.writeUInt32BE(data.length)
      const body = Buffer.concat([Buffer.from(type, 'latin1'), data])
      const crc = Buffer.alloc(4)
      crc.writeUInt32BE(crc32(body) >>> 0)
      return Buffer.concat([length, body, crc])
    }
    const header = Buffer.alloc(13)
    header.writeUInt32BE(this.width, 0)
    header.writeUInt32BE(this.height, 4)
    header[8] = 8 // bit depth
    header[9] = 2 // RGB
    return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', header), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))])
  }
}

/** Tick spacing of about `count` steps over [0, max]. */
function niceStep(max: number, count: number): number {
  const raw = max / count
  const power = 10 ** Math.floor(Math.log10(raw))
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power
  return 10 * power
}

const BLACK: Rgb = [0, 0, 0]
const GREY: Rgb = [200, 200, 200]
const BLUE: Rgb = [31, 90, 180]
const RED: Rgb = [200, 30, 30]

export function plotPolicies(results: Readonly<Record<string, Readonly<Record<string, { readonly coldStartP75Pct: number; readonly wastedMemoryPct: number }>>>>): Buffer {
  const traces = Object.entries(results)
  const panelW = 560
  const panelH = 480
  const canvas = new Canvas(Math.max(1, traces.length) * panelW, panelH)
  traces.forEach(([name, scores], p) => {
    const left = p * panelW + 70
    const top = 40
    const w = panelW - 170
    const h = panelH - 110
    const points = Object.entries(scores)
    const maxX = Math.max(...points.map(([, s]) => s.wastedMemoryPct)) * 1.1
    const maxY = Math.max(1, ...points.map(([, s]) => s.coldStartP75Pct)) * 1.15
    const px = (v: number): number => left + (v / maxX) * w
    const py = (v: number): number => top + h - (v / maxY) * h
    canvas.text(left, 12, name, BLACK)
    const xStep = niceStep(maxX, 6)
    for (let v = 0; v <= maxX; v += xStep) {
      canvas.line(px(v), top, px(v), top + h, GREY)
      const label = String(Math.round(v))
      canvas.text(px(v) - label.length * 4, top + h + 8, label, BLACK)
    }
    const yStep = niceStep(maxY, 6)
    for (let v = 0; v <= maxY; v += yStep) {
      canvas.line(left, py(v), left + w, py(v), GREY)
      const label = Number(v.toFixed(2)).toString()
      canvas.text(left - 8 - label.length * 8, py(v) - 5, label, BLACK)
    }
    canvas.line(left, top, left, top + h, BLACK)
    canvas.line(left, top + h, left + w, top + h, BLACK)
    canvas.text(left + w / 2 - 170, top + h + 30, 'wasted idle memory-time (fixed-10 = 100%)', BLACK)
    canvas.textUp(p * panelW + 8, top + h / 2, 'p75 app cold-start %', BLACK)
    const fixed = points.filter(([n]) => n.startsWith('fixed-')).sort((a, b) => a[1].wastedMemoryPct - b[1].wastedMemoryPct)
    for (let i = 1; i < fixed.length; i++) {
      const a = fixed[i - 1]?.[1]
      const b = fixed[i]?.[1]
      if (a !== undefined && b !== undefined) canvas.line(px(a.wastedMemoryPct), py(a.coldStartP75Pct), px(b.wastedMemoryPct), py(b.coldStartP75Pct), BLUE)
    }
    const placed: { x: number; y: number }[] = []
    for (const [label, s] of points) {
      const color = label.startsWith('fixed-') ? BLUE : RED
      const size = label.startsWith('fixed-') ? 7 : 11
      const x = px(s.wastedMemoryPct)
      const y = py(s.coldStartP75Pct)
      canvas.rect(x - size / 2, y - size / 2, size, size, color)
      // A label that would run into one already placed goes below its point instead.
      const clash = placed.some((p) => Math.abs(p.y - (y - 12)) < 14 && Math.abs(p.x - (x + 9)) < label.length * 8 + 8)
      const at = clash ? { x: x - label.length * 4, y: y + 9 } : { x: x + 9, y: y - 12 }
      canvas.text(at.x, at.y, label, color)
      placed.push(at)
    }
  })
  return canvas.png()
}
