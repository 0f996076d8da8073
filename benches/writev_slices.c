/* A response's writev(2) with empty slices among its full ones, against
 * the same bytes in the full slices alone: the time per write and its
 * read on loopback TCP, rounds interleaved (run by hand, never in CI).
 * geolb's HTTP/1 server writes a Content-Length answer as head, "", body,
 * "" (the chunked framing's prefix and suffix, empty). Six runs here on
 * 2026-12-04 (a 203-byte head and 1 KiB body, as `/1k` through geolb):
 * the empty slices' cost came out between -70 and +99 ns of a 7 us
 * round, either way by turns: nothing to gain, the writes are left so.
 *
 *   cc -O2 -o /tmp/writev_slices benches/writev_slices.c
 *   taskset -c 0 /tmp/writev_slices
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
static int cmp(const void *x, const void *y) { double a = *(const double *)x, b = *(const double *)y; return a < b ? -1 : a > b; }
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(void){
  int l=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in a={0};a.sin_family=AF_INET;a.sin_addr.s_addr=htonl(0x7f000001);
  bind(l,(void*)&a,sizeof a);listen(l,1);socklen_t al=sizeof a;getsockname(l,(void*)&a,&al);
  int w=socket(AF_INET,SOCK_STREAM,0);connect(w,(void*)&a,sizeof a);int r=accept(l,0,0);int one=1;
  setsockopt(w,IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);
  static char head[203],body[1024],buf[65536];memset(head,'h',203);memset(body,'b',1024);
  struct iovec four[4]={{head,203},{"",0},{body,1024},{"",0}}, two[2]={{head,203},{body,1024}};
  int n=203+1024, K=50000;
  double t4[21],t2[21];
  for(int round=0;round<21;round++){
    for(int which=0;which<2;which++){
      double t=now();
      for(int i=0;i<K;i++){ if(which==0) writev(w,four,4); else writev(w,two,2); int got=0; while(got<n) got+=recv(r,buf,sizeof buf,0);}
      double per=(now()-t)/K; if(which==0) t4[round]=per; else t2[round]=per;
    }
  }
  qsort(t4,21,sizeof(double),cmp);qsort(t2,21,sizeof(double),cmp);
  printf("4 slices (2 empty): %.0f ns, 2 slices: %.0f ns (medians of 21 rounds of %d writes and reads)\n",t4[10],t2[10],K);
}
