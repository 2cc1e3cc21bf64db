/** The local backend's instance checks keep to a tenth of the router's time however many instances there are. */
import t from 'tap'
import { CHECK_SHARE, nextCheckDelayMs } from '../../src/backends/local/check-pacing.ts'

t.test('short rounds: the configured interval', async (t) => {
  t.equal(nextCheckDelayMs(1000, 0), 1000, 'before the first round')
  t.equal(nextCheckDelayMs(1000, 20), 1000, 'a round of 20 ms (a few dozen instances)')
  t.equal(nextCheckDelayMs(1000, 111), 1000, 'up to a ninth of the interval')
})

t.test('long rounds (a thousand instances on a slow /proc): waits that keep the checks to their share', async (t) => {
  t.equal(nextCheckDelayMs(1000, 250), 2250, 'a 250 ms round is followed by 2.25 s: 250 of every 2,500 ms')
  for (const round of [120, 300, 1000]) {
    const wait = nextCheckDelayMs(1000, round)
    t.ok(round / (round + wait) <= CHECK_SHARE + 1e-9, `a ${round} ms round takes ${((100 * round) / (round + wait)).toFixed(1)} % of the time`)
  }
  t.equal(nextCheckDelayMs(5000, 250), 5000, 'a longer interval configured is kept')
  t.equal(nextCheckDelayMs(1000, -5), 1000, 'a negative measure counts as no time')
})

t.test('a round made long by a busy router (or anything else) puts the next off by ten intervals at most', async (t) => {
  t.equal(nextCheckDelayMs(1000, 3_600_000), 10_000)
  t.equal(nextCheckDelayMs(1000, 1500), 10_000)
  t.equal(nextCheckDelayMs(1000, 1000), 9000)
})
