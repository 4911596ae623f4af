# C declarations from <poll.h>. The core waits with poll(2), not epoll: a socket
# watched by an epoll set pays an ep_poll_callback (a lock taken with interrupts off)
# for every packet, TX timestamp and freed send buffer, also while nobody waits on it;
# poll() is on the socket's wait queue only while it waits.

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents

    short POLLIN, POLLERR

    int poll(pollfd *fds, unsigned long nfds, int timeout)
