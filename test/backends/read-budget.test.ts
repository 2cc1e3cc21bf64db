/** The /proc and log-size scans give the event loop back by count and by time, whichever comes first. */
import t from 'tap'
import { ReadBudget } from '../../src/backends/local/read-budget.ts'
import { turnsDuring } from '../fixtures/turns.ts'


t.test('reads that take long are given back by time, though the count would allow more (a slow /proc)', async (t) => {
  let now = 0
  const budget = new ReadBudget(128, { maxTurnMs: 2, now: () => now })
  const turns = await turnsDuring(async () => {
    for (let i = 0; i < 20; i++) {
      await budget.read()
      now += 0.5 // each read takes 0.5 ms
    }
  })
  t.equal(budget.turns, 4, 'a turn of four 0.5 ms reads, then the loop is given back: 20 reads, 4 yields')
  t.ok(turns >= 4, `other work ran between them (${turns} turns)`)
  t.equal(budget.reads, 20)
})

t.test('fast reads are given back by count', async (t) => {
  const budget = new ReadBudget(5, { maxTurnMs: 2, now: () => 0 })
  for (let i = 0; i < 20; i++) await budget.read()
  t.equal(budget.turns, 3, 'every 5 reads (20 reads: after the 5th, 10th and 15th)')
})

t.test('a budget above the reads, and time to spare, keeps them in one turn', async (t) => {
  const budget = new ReadBudget(100, { now: () => 0 })
  t.equal(await turnsDuring(async () => {
    for (let i = 0; i < 50; i++) await budget.read()
  }), 0)
  t.equal(budget.turns, 0)
})
