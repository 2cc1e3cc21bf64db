/**
 * The name of the OS user running maitre, for the one-user principal and the Mesos framework's
 * user. A uid with no passwd entry (a container run as an arbitrary uid, as the image and the k8s
 * manifests do: 10001) has no name to look up, and os.userInfo() throws: then $USER or $LOGNAME,
 * else the uid itself.
 */
import { userInfo } from 'node:os'

export function osUserName(lookup: () => { username: string } = userInfo, env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  try {
    return lookup().username
  } catch {
    return env['USER'] || env['LOGNAME'] || (uid === undefined ? 'maitre' : String(uid))
  }
}
