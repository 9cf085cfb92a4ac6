package postfix

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// Sockets inside a site's network namespace, opened by the test process
// itself: the drill's SMTP clients, its HTTP trail receiver and its DNS
// server at the dark site are Go code in this process, yet their sockets
// must live in a namespace (behind the veth that the outage cuts). A
// socket belongs to the namespace of the thread that created it (setns(2)
// with CLONE_NEWNET applies to the calling thread) and stays there
// whichever goroutine uses it afterwards.

// nsWorker is an OS thread that joined a namespace and creates sockets on
// request. The thread is never unlocked: when its goroutine ends, the
// runtime discards it, so no other goroutine ever runs in the namespace.
type nsWorker struct {
	reqs chan func()
}

// newNSWorker starts n threads in namespace ns (/run/netns/ns, made by
// `ip netns add`); they end when ctx is done.
func newNSWorker(ctx context.Context, ns string, n int) (*nsWorker, error) {
	w := &nsWorker{reqs: make(chan func())}
	errc := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread() // never unlocked: see nsWorker
			f, err := os.Open("/run/netns/" + ns)
			if err != nil {
				errc <- fmt.Errorf("namespace %s: %w", ns, err)
				return
			}
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			f.Close()
			if err != nil {
				errc <- fmt.Errorf("setns %s: %w", ns, err)
				return
			}
			errc <- nil
			for {
				select {
				case <-ctx.Done():
					return
				case req := <-w.reqs:
					req()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errc; err != nil {
			return nil, err
		}
	}
	return w, nil
}

// do runs f on one of the worker's threads and waits for it.
func (w *nsWorker) do(f func()) {
	done := make(chan struct{})
	w.reqs <- func() { f(); close(done) }
	<-done
}

// dial opens a TCP connection from local (an address of the namespace,
// "" for any) to addr inside the namespace.
func (w *nsWorker) dial(local, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	var err error
	w.do(func() {
		d := net.Dialer{Timeout: timeout}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		c, err = d.Dial("tcp", addr)
	})
	return c, err
}

// listen opens a TCP listener inside the namespace.
func (w *nsWorker) listen(addr string) (net.Listener, error) {
	var ln net.Listener
	var err error
	w.do(func() { ln, err = net.Listen("tcp", addr) })
	return ln, err
}

// listenPacket opens a UDP socket inside the namespace.
func (w *nsWorker) listenPacket(addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	var err error
	w.do(func() { pc, err = net.ListenPacket("udp", addr) })
	return pc, err
}
