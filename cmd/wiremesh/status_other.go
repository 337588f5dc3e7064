//go:build !unix

package main

// checkSocketDir has nothing to check where sockets live on a file system
// without Unix owners and modes.
func checkSocketDir(dir string) error { return nil }
