/** The OS user's name, even for a uid with no passwd entry (the image runs as 10001, which has none). */
import t from 'tap'
import { osUserName } from '../../src/auth/os-user.ts'

const noEntry = (): { username: string } => {
  throw Object.assign(new Error('A system error occurred: uv_os_get_passwd returned ENOENT (no such file or directory)'), { code: 'ERR_SYSTEM_ERROR' })
}

t.test('a uid with a passwd entry: its name', async (t) => {
  t.equal(osUserName(() => ({ username: 'alice' }), {}, 1000), 'alice')
})

t.test('a uid with none (a container run as 10001): $USER, else $LOGNAME, else the uid, never a crash', async (t) => {
  t.equal(osUserName(noEntry, { USER: 'bob' }, 10001), 'bob')
  t.equal(osUserName(noEntry, { USER: '', LOGNAME: 'carol' }, 10001), 'carol')
  t.equal(osUserName(noEntry, {}, 10001), '10001')
})
