package mesh

import "github.com/wiremesh/wiremesh/control/api"

func (p *kernelPlane) setPrivateKey(k api.Key) error { return p.dev.setPrivateKey(k) }
