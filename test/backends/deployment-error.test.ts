import t from 'tap'
import { DEPLOYMENT_ERRORS, deploymentErrorClass } from '../../src/backends/deployment-error.ts'

t.test('a deployment error is counted under a bounded class, never its free text', async (t) => {
  const classes = Object.values(DEPLOYMENT_ERRORS).map(deploymentErrorClass)
  t.equal(new Set(classes).size, classes.length, "each of Waiter's messages has its own class")
  t.notOk(classes.includes('other'))
  t.equal(deploymentErrorClass(DEPLOYMENT_ERRORS.badStartupCommand), 'invalid-startup-command')
  t.equal(deploymentErrorClass('ImagePullBackOff: Back-off pulling image "registry.example/app:1.2.3"'), 'image-pull-back-off', 'the image name is not in the label')
  t.equal(deploymentErrorClass('FailedCreate: Error creating: pods "maitre-abc-x7k2p" is forbidden: exceeded quota'), 'failed-create', 'nor the pod name')
  t.equal(deploymentErrorClass('Unschedulable: 0/3 nodes are available'), 'unschedulable')
  t.equal(deploymentErrorClass("The cluster refused to create the service's ReplicaSet (Forbidden)"), 'replicaset-rejected')
  t.equal(deploymentErrorClass('Something: nobody has seen this before'), 'other', 'anything else is one class')
})
