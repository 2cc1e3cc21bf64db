import t from 'tap'
import { VersionMemory } from '../../src/scaler/version-memory.ts'

t.test('a version that stops running keeps its settings; one that is collected leaves nothing', async (t) => {
  const calls: string[] = []
  const memory = new VersionMemory({
    resolver: { forget: (id) => void calls.push(`resolver ${id}`) },
    parameters: { forget: (id) => void calls.push(`parameters ${id}`) },
    autoscaler: { forget: (id) => void calls.push(`autoscaler ${id}`) },
    overrides: { clear: async (id) => void calls.push(`overrides ${id}`) },
    suspensions: { resume: async (id) => void calls.push(`suspension ${id}`) },
  })
  memory.stoppedRunning('a')
  t.same(calls.splice(0), ['autoscaler a', 'parameters a'], 'stopped: scaling state and cached parameters go; overrides, suspension and resolutions stay for its next start')
  await memory.collected('b')
  t.same(calls.sort(), ['autoscaler b', 'overrides b', 'parameters b', 'resolver b', 'suspension b'], 'collected: everything kept about it goes')
})
