package server

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gRPC reads a unary call's request inside the service's generated
// handler, before any interceptor runs, and answers a request that does not
// decode (INTERNAL) or is larger than the message limit
// (RESOURCE_EXHAUSTED) itself. auditUndecodable wraps a service's handlers
// so that such a call still goes through the request path afterwards: it
// is audited, counted and logged like every other call, with the code the
// caller saw. Its answer has already gone, so its event is recorded after
// it and the caller gets no x-request-id back (its own, if it sent one, is
// recorded).
func auditUndecodable(sd *grpc.ServiceDesc) *grpc.ServiceDesc {
	out := *sd
	out.Methods = make([]grpc.MethodDesc, len(sd.Methods))
	for i, md := range sd.Methods {
		handler, full := md.Handler, "/"+sd.ServiceName+"/"+md.MethodName
		md.Handler = func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			d := decoders.Get().(*decoder)
			d.dec = dec
			resp, err := handler(srv, ctx, d.decodeFunc, interceptor)
			derr := d.err
			d.dec, d.err = nil, nil
			decoders.Put(d)
			if derr == nil || interceptor == nil {
				return resp, err
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: full}
			return interceptor(ctx, undecoded{derr}, info, func(context.Context, any) (any, error) { return nil, derr })
		}
		out.Methods[i] = md
	}
	return &out
}

// decoder remembers whether gRPC's decoding of a request failed. They are
// pooled, each with its method value bound once, so the wrapper costs a
// call no allocation.
type decoder struct {
	dec        func(any) error
	err        error
	decodeFunc func(any) error
}

func (d *decoder) decode(m any) error {
	err := d.dec(m)
	d.err = err
	return err
}

var decoders = sync.Pool{New: func() any {
	d := &decoder{}
	d.decodeFunc = d.decode
	return d
}}

// undecoded stands for a request gRPC could not read; the interceptor
// refuses it with gRPC's error after authenticating the caller.
type undecoded struct{ err error }

// unknownMethod answers a call to a method no service has: gRPC routes
// such calls through the stream interceptors (grpc.UnknownServiceHandler),
// so they are audited too.
func unknownMethod(any, grpc.ServerStream) error {
	return status.Error(codes.Unimplemented, "unknown method")
}
