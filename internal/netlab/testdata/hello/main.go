// Command hello is built by netlab's BuildBinary test: it prints its
// arguments and the inode of its network namespace.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

func main() {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		os.Exit(1)
	}
	fmt.Printf("hello %s netns=%d\n", strings.Join(os.Args[1:], " "), st.Ino)
}
